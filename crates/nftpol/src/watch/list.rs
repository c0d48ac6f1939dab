//! One page of a list, trimmed object by object while it streams in.
//!
//! `Api::list` parses a whole page into API objects first: a server that
//! ignores `limit` (the API server answers from its watch cache when asked
//! for resourceVersion 0, and the development server always does) sends
//! 100k pods in one page, about 1 GiB as `Vec<Pod>`. Here the body goes in
//! chunks to a parser on a blocking thread, which keeps only the trimmed
//! form of each item, so the peak is one object plus the store.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hash;
use std::io::Read;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::AsyncReadExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use kube::Client;
use kube::api::ListParams;
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use tokio::sync::mpsc;

use super::store::{MapKey, Trim};

/// Body chunks in flight between the connection and the parser.
const CHUNKS_IN_FLIGHT: usize = 8;
const CHUNK: usize = 64 * 1024;

/// Lists one page of `url` (a collection path, as `Api::resource_url`),
/// adding each item, trimmed by `trim`, to `items`. Returns them with the
/// list's metadata (resourceVersion, continue token).
pub async fn list_page<K, Key, T, M>(
    client: &Client,
    url: &str,
    params: &ListParams,
    items: BTreeMap<M, Arc<T>>,
    trim: impl Fn(&K) -> Arc<T> + Send + 'static,
) -> Result<(BTreeMap<M, Arc<T>>, ListMeta), kube::Error>
where
    K: DeserializeOwned + Trim<Key, T> + Send + 'static,
    Key: Ord + Hash + Clone + Send + 'static,
    T: Send + Sync + 'static,
    M: MapKey<Key, T> + Send + 'static,
{
    let req = kube::core::Request::new(url)
        .list(params)
        .map_err(kube::Error::BuildRequest)?;
    let body = client.request_stream(req).await?;
    let (tx, rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(CHUNKS_IN_FLIGHT);
    let parser = tokio::task::spawn_blocking(move || {
        let reader = Chunks {
            rx,
            buf: Vec::new(),
            pos: 0,
        };
        let mut items = items;
        let meta = read_list(reader, &mut items, trim)?;
        Ok::<_, serde_json::Error>((items, meta))
    });
    let mut body = std::pin::pin!(body);
    loop {
        let mut chunk = vec![0u8; CHUNK];
        match body.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                chunk.truncate(n);
                if tx.send(Ok(chunk)).await.is_err() {
                    break; // the parser stopped: its error says why
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                break;
            }
        }
    }
    drop(tx);
    parser
        .await
        .expect("the list parser does not panic")
        .map_err(kube::Error::SerdeError)
}

/// Reads a `*List` object from `reader`, adding each item, trimmed by
/// `trim`, to `items` as soon as it is parsed; returns the list's metadata.
pub fn read_list<K, Key, T, M>(
    reader: impl Read,
    items: &mut BTreeMap<M, Arc<T>>,
    trim: impl Fn(&K) -> Arc<T>,
) -> serde_json::Result<ListMeta>
where
    K: DeserializeOwned + Trim<Key, T>,
    M: MapKey<Key, T>,
{
    let mut de = serde_json::Deserializer::from_reader(reader);
    let meta = ListSeed {
        items,
        trim: &trim,
        kind: PhantomData,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(meta)
}

/// The body as `Read`, for serde_json, on a blocking thread.
struct Chunks {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for Chunks {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A `*List` object: `metadata` kept, `items` trimmed one by one, the rest
/// skipped.
struct ListSeed<'a, K, Key, T, M, F> {
    items: &'a mut BTreeMap<M, Arc<T>>,
    trim: &'a F,
    kind: PhantomData<(K, Key)>,
}

impl<'de, K, Key, T, M, F> DeserializeSeed<'de> for ListSeed<'_, K, Key, T, M, F>
where
    K: DeserializeOwned + Trim<Key, T>,
    M: MapKey<Key, T>,
    F: Fn(&K) -> Arc<T>,
{
    type Value = ListMeta;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<ListMeta, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, K, Key, T, M, F> Visitor<'de> for ListSeed<'_, K, Key, T, M, F>
where
    K: DeserializeOwned + Trim<Key, T>,
    M: MapKey<Key, T>,
    F: Fn(&K) -> Arc<T>,
{
    type Value = ListMeta;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes list object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ListMeta, A::Error> {
        let mut meta = ListMeta::default();
        while let Some(field) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match field.as_ref() {
                "metadata" => meta = map.next_value()?,
                "items" => map.next_value_seed(ItemsSeed {
                    items: &mut *self.items,
                    trim: self.trim,
                    kind: PhantomData,
                })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(meta)
    }
}

/// The `items` array (`null` is an empty list).
struct ItemsSeed<'a, K, Key, T, M, F> {
    items: &'a mut BTreeMap<M, Arc<T>>,
    trim: &'a F,
    kind: PhantomData<(K, Key)>,
}

impl<'de, K, Key, T, M, F> DeserializeSeed<'de> for ItemsSeed<'_, K, Key, T, M, F>
where
    K: DeserializeOwned + Trim<Key, T>,
    M: MapKey<Key, T>,
    F: Fn(&K) -> Arc<T>,
{
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, K, Key, T, M, F> Visitor<'de> for ItemsSeed<'_, K, Key, T, M, F>
where
    K: DeserializeOwned + Trim<Key, T>,
    M: MapKey<Key, T>,
    F: Fn(&K) -> Arc<T>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of objects")
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(obj) = seq.next_element::<K>()? {
            let value = (self.trim)(&obj);
            self.items.insert(M::new(obj.key(), &value), value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::{ObjectKey, PodInfo};
    use k8s_openapi::api::core::v1::Pod;

    fn parse(body: &str) -> (BTreeMap<ObjectKey, Arc<PodInfo>>, ListMeta) {
        let mut items: BTreeMap<ObjectKey, Arc<PodInfo>> = BTreeMap::new();
        let interner = std::cell::RefCell::new(crate::compiler::snapshot::Interner::default());
        let meta = read_list(body.as_bytes(), &mut items, |p: &Pod| {
            Arc::new(p.trim(&mut interner.borrow_mut()))
        })
        .expect("a list");
        (items, meta)
    }

    #[test]
    fn items_are_trimmed_and_the_list_metadata_kept() {
        let (items, meta) = parse(
            r#"{"kind":"PodList","apiVersion":"v1",
                "metadata":{"resourceVersion":"42","continue":"next"},
                "items":[
                  {"metadata":{"namespace":"x","name":"a","labels":{"app":"web"},
                               "managedFields":[{"manager":"kubectl"}]},
                   "spec":{"containers":[{"name":"c","ports":[{"name":"http","containerPort":80}]}]},
                   "status":{"podIP":"10.0.0.1"}},
                  {"metadata":{"namespace":"x","name":"b"}}]}"#,
        );
        assert_eq!(meta.resource_version.as_deref(), Some("42"));
        assert_eq!(meta.continue_.as_deref(), Some("next"));
        let a = &items[&ObjectKey::new("x", "a")];
        assert_eq!(a.labels.get("app"), Some("web"));
        assert_eq!(
            a.resolve_port("http", crate::compiler::Protocol::Tcp),
            Some(80)
        );
        assert!(items.contains_key(&ObjectKey::new("x", "b")));
    }

    #[test]
    fn null_items_are_an_empty_list() {
        let (items, meta) = parse(r#"{"metadata":{"resourceVersion":"7"},"items":null}"#);
        assert!(items.is_empty());
        assert_eq!(meta.resource_version.as_deref(), Some("7"));
    }
}
