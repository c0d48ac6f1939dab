//! The object store: every object as JSON, one global resourceVersion
//! counter, and a bounded history of changes that watches replay.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::error::ApiError;
use super::resources::{self, ResourceType};
use super::selectors::{FieldSelector, LabelSelector};
use super::validation::default_and_validate;

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One write, as watches see it. Objects are in stored form.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub storage: &'static str,
    pub kind: ChangeKind,
    /// The object after the change (for a delete: as it was, with the delete's resourceVersion).
    pub object: Value,
    /// The object before a modification (decides what a filtered watch sees).
    pub prev: Option<Value>,
}

/// Which objects a list or watch wants (matched against the client's form).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, external: &Value) -> bool {
        let ns_ok = match &self.namespace {
            None => true,
            Some(ns) => {
                external
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    == Some(ns.as_str())
            }
        };
        ns_ok && self.labels.matches(external) && self.fields.matches(external)
    }
}

type Key = (&'static str, String, String);

struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// Every change with a resourceVersion above this one is in `history`.
    history_start: u64,
    history_size: usize,
    uid_counter: u64,
}

/// Options of a write.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOpts {
    /// `dryRun=All`: check and return the result, change nothing.
    pub dry_run: bool,
    /// Writing the `status` subresource.
    pub status: bool,
}

/// What a watch starts from.
pub struct WatchStart {
    /// Changes to send first (replayed history, or the current objects as ADDED).
    pub initial: Vec<Arc<Change>>,
    pub rx: broadcast::Receiver<Arc<Change>>,
    /// The resourceVersion the initial events bring the watch to.
    pub rv: u64,
}

/// The in-memory store. Every method is synchronous and holds one lock briefly.
pub struct Store {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Change>>,
    seed: u64,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Now, as RFC 3339 with seconds (`metav1.Time`).
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn rv_of(v: &Value) -> Option<&str> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn meta_mut(v: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    v["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

impl Store {
    pub fn new(history_size: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
            ^ u64::from(std::process::id()).rotate_left(32);
        Self {
            state: Mutex::new(State {
                rv: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_start: 0,
                history_size: history_size.max(1),
                uid_counter: 0,
            }),
            tx,
            seed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Forgets the change history: a watch from any older resourceVersion
    /// now gets `410 Expired`.
    pub fn compact_history(&self) {
        let mut st = self.lock();
        st.history.clear();
        st.history_start = st.rv;
    }

    fn uid(&self, st: &mut State) -> String {
        st.uid_counter += 1;
        let a = splitmix(self.seed ^ st.uid_counter);
        let b = splitmix(a ^ st.uid_counter.rotate_left(17));
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }

    fn record(&self, st: &mut State, change: Change) {
        let change = Arc::new(change);
        st.history.push_back(change.clone());
        while st.history.len() > st.history_size {
            if let Some(old) = st.history.pop_front() {
                st.history_start = old.rv;
            }
        }
        // No receivers is fine.
        let _ = self.tx.send(change);
    }

    fn key(rt: &ResourceType, ns: &str, name: &str) -> Key {
        let ns = if rt.namespaced { ns } else { "" };
        (rt.storage, ns.to_string(), name.to_string())
    }

    /// One object, in stored form.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.lock()
            .objects
            .get(&Self::key(rt, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// Objects of a resource in client form that pass the filter, and the list's resourceVersion.
    pub fn list(&self, rt: &ResourceType, filter: &Filter) -> (Vec<Value>, u64) {
        let st = self.lock();
        let items = st
            .objects
            .range((rt.storage, String::new(), String::new())..)
            .take_while(|((s, _, _), _)| *s == rt.storage)
            .map(|(_, v)| rt.to_external(v))
            .filter(|v| filter.matches(v))
            .collect();
        (items, st.rv)
    }

    fn check_namespace(st: &State, rt: &ResourceType, ns: &str) -> Result<(), ApiError> {
        if rt.namespaced
            && !st
                .objects
                .contains_key(&("namespaces", String::new(), ns.to_string()))
        {
            return Err(ApiError::not_found(resources::namespaces(), ns));
        }
        Ok(())
    }

    /// Creates an object (stored form, may use `generateName`); returns it as stored.
    pub fn create(
        &self,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        let primary = resources::primary(rt.storage);
        let mut st = self.lock();
        Self::check_namespace(&st, rt, ns)?;
        let meta = meta_mut(&mut obj);
        if rt.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty()
            && let Some(prefix) = meta.get("generateName").and_then(Value::as_str)
        {
            const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            let prefix = prefix.to_string();
            for attempt in 0u64.. {
                let mut r = splitmix(self.seed ^ st.rv ^ attempt.wrapping_mul(7919));
                let suffix: String = (0..5)
                    .map(|_| {
                        let c = CHARS[(r % CHARS.len() as u64) as usize] as char;
                        r /= CHARS.len() as u64;
                        c
                    })
                    .collect();
                name = format!("{prefix}{suffix}");
                if !st.objects.contains_key(&Self::key(rt, ns, &name)) {
                    break;
                }
            }
            meta.insert("name".into(), json!(name));
        }
        for k in ["resourceVersion", "deletionTimestamp", "managedFields"] {
            meta.remove(k);
        }
        default_and_validate(primary, &mut obj)?;
        let key = Self::key(rt, ns, &name);
        if st.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        let uid = self.uid(&mut st);
        let rv = st.rv + 1;
        let meta = meta_mut(&mut obj);
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if rt.generation {
            meta.insert("generation".into(), json!(1));
        }
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        if opts.dry_run {
            return Ok(obj);
        }
        st.rv = rv;
        st.objects.insert(key, obj.clone());
        self.record(
            &mut st,
            Change {
                rv,
                storage: rt.storage,
                kind: ChangeKind::Added,
                object: obj.clone(),
                prev: None,
            },
        );
        Ok(obj)
    }

    /// Replaces an object with what `f` makes of the stored one (an update or
    /// a patch); checks a given resourceVersion, keeps what a client may not
    /// change, bumps `generation` when `spec` changed. A write that changes
    /// nothing returns the object without a new resourceVersion.
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: WriteOpts,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let primary = resources::primary(rt.storage);
        let mut st = self.lock();
        let key = Self::key(rt, ns, name);
        let old = st
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let mut new = f(&old)?;
        if !new.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        let given_name = name_of(&new);
        if !given_name.is_empty() && given_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({given_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(given_ns) = new.pointer("/metadata/namespace").and_then(Value::as_str)
            && rt.namespaced
            && !given_ns.is_empty()
            && given_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let old_rv = rv_of(&old).unwrap_or_default().to_string();
        if let Some(given) = rv_of(&new)
            && given != old_rv
        {
            return Err(ApiError::stale(rt, name));
        }
        if opts.status {
            // The status subresource changes status only.
            let status = new.get("status").cloned();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    new.as_object_mut().map(|m| m.remove("status"));
                }
            }
        } else if rt.status_subresource {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().map(|m| m.remove("status"));
                }
            }
        }
        let old_meta = old["metadata"].clone();
        let meta = meta_mut(&mut new);
        meta.insert("name".into(), json!(name));
        if rt.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        for k in [
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
        ] {
            match old_meta.get(k) {
                Some(v) => meta.insert(k.into(), v.clone()),
                None => meta.remove(k),
            };
        }
        meta.remove("managedFields");
        default_and_validate(primary, &mut new)?;
        if new == old {
            return Ok(old);
        }
        if rt.generation && new.get("spec") != old.get("spec") {
            let g = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
        let rv = st.rv + 1;
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        if opts.dry_run {
            return Ok(new);
        }
        st.rv = rv;
        st.objects.insert(key, new.clone());
        self.record(
            &mut st,
            Change {
                rv,
                storage: rt.storage,
                kind: ChangeKind::Modified,
                object: new.clone(),
                prev: Some(old),
            },
        );
        Ok(new)
    }

    fn remove_locked(&self, st: &mut State, key: &Key) -> Option<Value> {
        let mut obj = st.objects.remove(key)?;
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(
            st,
            Change {
                rv,
                storage: key.0,
                kind: ChangeKind::Deleted,
                object: obj.clone(),
                prev: None,
            },
        );
        Some(obj)
    }

    /// Deletes an object at once (a namespace with everything in it).
    /// `preconditions` are `DeleteOptions.preconditions` (uid, resourceVersion).
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        preconditions: Option<&Value>,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let key = Self::key(rt, ns, name);
        let obj = st
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        for (field, meta_field) in [("uid", "uid"), ("resourceVersion", "resourceVersion")] {
            if let Some(want) = preconditions
                .and_then(|p| p.get(field))
                .and_then(Value::as_str)
                && obj
                    .pointer(&format!("/metadata/{meta_field}"))
                    .and_then(Value::as_str)
                    != Some(want)
            {
                return Err(ApiError::conflict(
                    rt,
                    name,
                    &format!("Precondition failed: {field} in precondition: {want}"),
                ));
            }
        }
        if opts.dry_run {
            return Ok(obj.clone());
        }
        if rt.storage == "namespaces" {
            let inside: Vec<Key> = st
                .objects
                .keys()
                .filter(|(s, n, _)| *s != "namespaces" && n == name)
                .cloned()
                .collect();
            for k in inside {
                self.remove_locked(&mut st, &k);
            }
        }
        Ok(self
            .remove_locked(&mut st, &key)
            .expect("object checked above"))
    }

    /// Deletes every object of a resource that passes the filter; returns them.
    pub fn delete_collection(
        &self,
        rt: &ResourceType,
        filter: &Filter,
        opts: WriteOpts,
    ) -> Vec<Value> {
        let (items, _) = self.list(rt, filter);
        let mut out = Vec::new();
        for item in items {
            let ns = item
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if let Ok(v) = self.delete(rt, &ns, name_of(&item), None, opts) {
                out.push(v);
            }
        }
        out
    }

    /// Starts a watch. `from`: `Some(rv)` replays the changes after `rv`
    /// (`410 Expired` when they are no longer kept); `None` starts with the
    /// current objects as ADDED.
    pub fn watch(&self, rt: &ResourceType, from: Option<u64>) -> Result<WatchStart, ApiError> {
        let st = self.lock();
        let rx = self.tx.subscribe();
        let initial = match from {
            Some(rv) if rv < st.history_start => {
                return Err(ApiError::gone(format!(
                    "too old resource version: {rv} ({})",
                    st.history_start + 1
                )));
            }
            Some(rv) => st
                .history
                .iter()
                .filter(|c| c.rv > rv && c.storage == rt.storage)
                .cloned()
                .collect(),
            None => st
                .objects
                .range((rt.storage, String::new(), String::new())..)
                .take_while(|((s, _, _), _)| *s == rt.storage)
                .map(|(_, v)| {
                    Arc::new(Change {
                        rv: st.rv,
                        storage: rt.storage,
                        kind: ChangeKind::Added,
                        object: v.clone(),
                        prev: None,
                    })
                })
                .collect(),
        };
        Ok(WatchStart {
            initial,
            rx,
            rv: st.rv,
        })
    }
}
