//! Just enough of the Kubernetes protobuf encoding for `kubectl create
//! namespace`, whose typed client sends `application/vnd.kubernetes.protobuf`
//! (other kubectl commands send JSON). Other kinds in protobuf get 415.

use serde_json::{Map, Value, json};

enum Field<'a> {
    Varint,
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of one message, in order.
fn fields(buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let field = match key & 7 {
            0 => {
                varint(buf, &mut pos)?;
                Field::Varint
            }
            1 => {
                pos += 8;
                Field::Varint
            }
            5 => {
                pos += 4;
                Field::Varint
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let end = pos.checked_add(len).filter(|e| *e <= buf.len())?;
                let b = &buf[pos..end];
                pos = end;
                Field::Bytes(b)
            }
            _ => return None,
        };
        if pos > buf.len() {
            return None;
        }
        out.push((key >> 3, field));
    }
    Some(out)
}

fn string(b: &[u8]) -> Option<Value> {
    std::str::from_utf8(b).ok().map(|s| json!(s))
}

/// A `map<string,string>` entry: 1 key, 2 value.
fn map_entry(b: &[u8]) -> Option<(String, Value)> {
    let (mut k, mut v) = (String::new(), json!(""));
    for (n, f) in fields(b)? {
        if let Field::Bytes(b) = f {
            match n {
                1 => k = std::str::from_utf8(b).ok()?.to_string(),
                2 => v = string(b)?,
                _ => {}
            }
        }
    }
    Some((k, v))
}

fn object_meta(b: &[u8]) -> Option<Value> {
    let mut m = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), Vec::new());
    for (n, f) in fields(b)? {
        let Field::Bytes(b) = f else { continue };
        match n {
            1 => _ = m.insert("name".into(), string(b)?),
            2 => _ = m.insert("generateName".into(), string(b)?),
            3 => _ = m.insert("namespace".into(), string(b)?),
            11 => {
                let (k, v) = map_entry(b)?;
                labels.insert(k, v);
            }
            12 => {
                let (k, v) = map_entry(b)?;
                annotations.insert(k, v);
            }
            14 => finalizers.push(string(b)?),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Some(Value::Object(m))
}

/// Decodes a protobuf-encoded Namespace (`k8s\0` + runtime.Unknown).
pub fn decode_namespace(body: &[u8]) -> Option<Value> {
    let unknown = body.strip_prefix(b"k8s\0")?;
    let (mut api_version, mut kind, mut raw) = (None, None, None);
    for (n, f) in fields(unknown)? {
        let Field::Bytes(b) = f else { continue };
        match n {
            1 => {
                for (n, f) in fields(b)? {
                    if let Field::Bytes(b) = f {
                        match n {
                            1 => api_version = string(b),
                            2 => kind = string(b),
                            _ => {}
                        }
                    }
                }
            }
            2 => raw = Some(b),
            _ => {}
        }
    }
    if kind.as_ref().and_then(Value::as_str) != Some("Namespace") {
        return None;
    }
    let mut ns = json!({"apiVersion": api_version?, "kind": "Namespace", "metadata": {}});
    for (n, f) in fields(raw?)? {
        let Field::Bytes(b) = f else { continue };
        match n {
            1 => ns["metadata"] = object_meta(b)?,
            2 => {
                let fin: Option<Vec<Value>> = fields(b)?
                    .into_iter()
                    .filter_map(|(n, f)| match (n, f) {
                        (1, Field::Bytes(b)) => Some(string(b)),
                        _ => None,
                    })
                    .collect();
                let fin = fin?;
                if !fin.is_empty() {
                    ns["spec"] = json!({"finalizers": fin});
                }
            }
            _ => {}
        }
    }
    Some(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(field: u8, b: &[u8]) -> Vec<u8> {
        let mut v = vec![(field << 3) | 2, b.len() as u8];
        v.extend_from_slice(b);
        v
    }

    #[test]
    fn namespace() {
        let type_meta = [ld(1, b"v1"), ld(2, b"Namespace")].concat();
        let label = [ld(1, b"team"), ld(2, b"shop")].concat();
        let meta = [ld(1, b"foo"), ld(11, &label)].concat();
        let raw = [ld(1, &meta), ld(2, &[]), ld(3, &[])].concat();
        let body = [b"k8s\0".to_vec(), ld(1, &type_meta), ld(2, &raw)].concat();
        let ns = decode_namespace(&body).unwrap();
        assert_eq!(
            ns,
            json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "foo", "labels": {"team": "shop"}}})
        );
    }
}
