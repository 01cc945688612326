//! The message as the router sees it: a body, application properties and system properties.

use std::borrow::Cow;

use bytes::Bytes;

/// A property name prepared for lookups: its case-folded hash is computed once, when a route
/// is compiled, so that a lookup compares hashes and confirms only the entry that matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PropKey {
    name: Cow<'static, str>,
    hash: u32,
}

impl PropKey {
    /// A key for `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: Cow::Owned(name.to_owned()),
            hash: folded_hash(name),
        }
    }

    /// A key for an ASCII name known at compile time.
    pub const fn from_static(name: &'static str) -> Self {
        Self {
            name: Cow::Borrowed(name),
            hash: folded_hash_ascii(name.as_bytes()),
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: String,
    value: String,
    hash: u32,
}

/// How many entries a map holds before [`Properties::insert`] keeps an index of its keys.
/// Below it, a scan by hash is the cheapest; above it, the index keeps inserting `n` keys
/// linear (a 64 KiB topic can carry thousands of them).
const INDEX_FROM: usize = 32;

/// A property map with case-insensitive keys and string values, in insertion order.
///
/// Property bags are small (a handful of entries), so a vector scanned by case-folded hash
/// beats a hash map; no lookup allocates, and a mismatch costs one integer comparison. A map
/// that grows past [`INDEX_FROM`] entries also keeps an index from case-folded key to entry,
/// so that neither inserting nor looking up costs a scan of the whole map.
#[derive(Debug, Clone, Default)]
pub struct Properties {
    entries: Vec<Entry>,
    /// Whether some key starts with `$`: lets `$name` lookups skip the application properties.
    has_dollar_key: bool,
    /// Case-folded key -> position in `entries`, once the map is large. Keyed by the folded
    /// text (not by the 32-bit hash, whose collisions a sender can craft) with std's randomly
    /// seeded hasher.
    index: Option<std::collections::HashMap<String, usize>>,
}

/// Two maps are equal when they hold the same entries in the same order (the index is
/// derived from them).
impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for Properties {}

impl Properties {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing an entry whose key differs only in case (the entry
    /// keeps its position; the last value and spelling win).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        let hash = folded_hash(&key);
        self.has_dollar_key |= key.starts_with('$');
        if let Some(index) = &mut self.index {
            match index.entry(fold(&key)) {
                std::collections::hash_map::Entry::Occupied(slot) => {
                    self.entries[*slot.get()] = Entry { key, value, hash };
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(self.entries.len());
                    self.entries.push(Entry { key, value, hash });
                }
            }
            return;
        }
        match self.position(&key, hash) {
            Some(at) => self.entries[at] = Entry { key, value, hash },
            None => {
                self.entries.push(Entry { key, value, hash });
                if self.entries.len() >= INDEX_FROM {
                    self.build_index();
                }
            }
        }
    }

    fn build_index(&mut self) {
        let index = self
            .entries
            .iter()
            .enumerate()
            .map(|(at, e)| (fold(&e.key), at))
            .collect();
        self.index = Some(index);
    }

    /// The position of the entry of `key` in a map without an index.
    fn position(&self, key: &str, hash: u32) -> Option<usize> {
        let found = self
            .entries
            .iter()
            .position(|e| e.hash == hash && keys_equal(&e.key, key));
        #[cfg(test)]
        tests::SCANNED.with(|s| s.set(s.get() + found.map_or(self.entries.len(), |at| at + 1)));
        found
    }

    fn find(&self, key: &str, hash: u32) -> Option<&str> {
        if let Some(index) = &self.index {
            return index
                .get(&fold(key))
                .map(|&at| self.entries[at].value.as_str());
        }
        self.entries
            .iter()
            .find(|e| e.hash == hash && keys_equal(&e.key, key))
            .map(|e| e.value.as_str())
    }

    /// The value of `key`, compared ignoring case.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.find(key, folded_hash(key))
    }

    /// The value of a prepared key.
    pub fn get_key(&self, key: &PropKey) -> Option<&str> {
        self.find(&key.name, key.hash)
    }

    /// The value of a key that starts with `$`; cheap when no key of the map does.
    pub(crate) fn get_dollar(&self, key: &PropKey) -> Option<&str> {
        if self.has_dollar_key {
            self.get_key(key)
        } else {
            None
        }
    }

    /// Whether the map holds `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The entries, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Properties {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = Self::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// FNV-1a of the key with every character folded by [`simple_upper`]: keys that
/// [`keys_equal`] calls equal have equal hashes.
fn folded_hash(key: &str) -> u32 {
    if key.is_ascii() {
        return folded_hash_ascii(key.as_bytes());
    }
    let mut hash = FNV_OFFSET;
    let mut buf = [0u8; 4];
    for c in key.chars() {
        for &b in simple_upper(c).encode_utf8(&mut buf).as_bytes() {
            hash = (hash ^ u32::from(b)).wrapping_mul(FNV_PRIME);
        }
    }
    hash
}

const fn folded_hash_ascii(bytes: &[u8]) -> u32 {
    let mut hash = FNV_OFFSET;
    let mut i = 0;
    while i < bytes.len() {
        hash = (hash ^ bytes[i].to_ascii_uppercase() as u32).wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

/// A key with every character folded by [`simple_upper`]: two keys are [`keys_equal`] exactly
/// when their folds are equal.
fn fold(key: &str) -> String {
    if key.is_ascii() {
        key.to_ascii_uppercase()
    } else {
        key.chars().map(simple_upper).collect()
    }
}

/// Ordinal ignore-case equality of two keys: every character folded by [`simple_upper`].
pub(crate) fn keys_equal(a: &str, b: &str) -> bool {
    if a.len() == b.len()
        && (crate::text::same_bytes(a.as_bytes(), b.as_bytes()) || a.eq_ignore_ascii_case(b))
    {
        return true;
    }
    if a.is_ascii() && b.is_ascii() {
        return false;
    }
    let mut left = a.chars().map(simple_upper);
    let mut right = b.chars().map(simple_upper);
    loop {
        match (left.next(), right.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

/// The simple (one-to-one) upper case of a character, as .NET's ordinal ignore-case uses.
pub(crate) fn simple_upper(c: char) -> char {
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

/// System property keys as edgeHub stores them.
pub mod system {
    use super::PropKey;

    /// The sender's device id.
    pub const CONNECTION_DEVICE_ID: &str = "connectionDeviceId";
    /// The sender's module id, for module messages.
    pub const CONNECTION_MODULE_ID: &str = "connectionModuleId";
    /// The module output the message was sent on.
    pub const OUTPUT_NAME: &str = "outputName";
    /// The body's content type.
    pub const CONTENT_TYPE: &str = "contentType";
    /// The body's content encoding.
    pub const CONTENT_ENCODING: &str = "contentEncoding";
    /// `twinChangeNotification` for twin change notifications.
    pub const MESSAGE_TYPE: &str = "messageType";

    pub(crate) const CONNECTION_MODULE_ID_KEY: PropKey = PropKey::from_static(CONNECTION_MODULE_ID);
    pub(crate) const OUTPUT_NAME_KEY: PropKey = PropKey::from_static(OUTPUT_NAME);
    pub(crate) const CONTENT_TYPE_KEY: PropKey = PropKey::from_static(CONTENT_TYPE);
    pub(crate) const CONTENT_ENCODING_KEY: PropKey = PropKey::from_static(CONTENT_ENCODING);
    pub(crate) const MESSAGE_TYPE_KEY: PropKey = PropKey::from_static(MESSAGE_TYPE);
}

/// A message to route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The body bytes.
    pub body: Bytes,
    /// Application properties, set by the sender.
    pub properties: Properties,
    /// System properties: set by the SDK (content type, ids) and by the hub (sender identity).
    pub system_properties: Properties,
}

/// Where a message comes from, as route sources see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageSource<'a> {
    /// A twin change notification: `/twinChangeNotifications`.
    TwinChangeNotification,
    /// Telemetry of a device (or a module message without a module id): `/messages`.
    Device,
    /// A module message without an output name: `/messages/modules/{module}`.
    Module {
        /// The sending module.
        module: &'a str,
    },
    /// A module output: `/messages/modules/{module}/outputs/{output}`.
    ModuleOutput {
        /// The sending module.
        module: &'a str,
        /// The output name.
        output: &'a str,
    },
}

impl Message {
    /// The source of this message, from its system properties (spec 4.1).
    pub fn source(&self) -> MessageSource<'_> {
        let sys = &self.system_properties;
        if sys
            .get_key(&system::MESSAGE_TYPE_KEY)
            .is_some_and(|t| t.eq_ignore_ascii_case("twinChangeNotification"))
        {
            return MessageSource::TwinChangeNotification;
        }
        match (
            sys.get_key(&system::CONNECTION_MODULE_ID_KEY),
            sys.get_key(&system::OUTPUT_NAME_KEY),
        ) {
            (Some(module), Some(output)) => MessageSource::ModuleOutput { module, output },
            (Some(module), None) => MessageSource::Module { module },
            _ => MessageSource::Device,
        }
    }
}

impl Message {
    /// Builds a message from its JSON description, as in the route test vectors and in the
    /// files of `edgehub route test --message`:
    /// `{"body": "...", "bodyEncodedAs": "utf-16le" | "utf-32le", "contentType": "...",
    /// "contentEncoding": "...", "systemProperties": {...}, "properties": {...}}`. Every field
    /// is optional; `contentType` and `contentEncoding` become system properties; a `null`
    /// value means absent.
    ///
    /// # Errors
    ///
    /// A message naming the field that has the wrong shape.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        use serde_json::Value;
        let obj = value.as_object().ok_or("a message must be a JSON object")?;
        let text_field = |name: &str| -> Result<Option<&str>, String> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(format!("'{name}' must be a string")),
            }
        };
        let map_field = |name: &str| -> Result<Properties, String> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(Properties::new()),
                Some(Value::Object(map)) => map
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| match v {
                        Value::String(s) => Ok((k.clone(), s.clone())),
                        _ => Err(format!("'{name}.{k}' must be a string")),
                    })
                    .collect(),
                Some(_) => Err(format!("'{name}' must be an object of strings")),
            }
        };
        let text = text_field("body")?.unwrap_or_default();
        let body: Vec<u8> = match text_field("bodyEncodedAs")? {
            None => text.as_bytes().to_vec(),
            Some(e) if e.eq_ignore_ascii_case("utf-8") => text.as_bytes().to_vec(),
            Some(e) if e.eq_ignore_ascii_case("utf-16le") => {
                text.encode_utf16().flat_map(u16::to_le_bytes).collect()
            }
            Some(e) if e.eq_ignore_ascii_case("utf-32le") => text
                .chars()
                .flat_map(|c| u32::from(c).to_le_bytes())
                .collect(),
            Some(other) => {
                return Err(format!(
                    "'bodyEncodedAs' must be utf-8, utf-16le or utf-32le, not '{other}'"
                ));
            }
        };
        let mut system_properties = map_field("systemProperties")?;
        if let Some(ct) = text_field("contentType")? {
            system_properties.insert(system::CONTENT_TYPE, ct);
        }
        if let Some(ce) = text_field("contentEncoding")? {
            system_properties.insert(system::CONTENT_ENCODING, ce);
        }
        Ok(Self {
            body: body.into(),
            properties: map_field("properties")?,
            system_properties,
        })
    }
}

impl MessageSource<'_> {
    /// The path segments of this source, e.g. `["messages", "modules", "m1"]`.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        let parts: [Option<&str>; 5] = match *self {
            Self::TwinChangeNotification => {
                [Some("twinChangeNotifications"), None, None, None, None]
            }
            Self::Device => [Some("messages"), None, None, None, None],
            Self::Module { module } => {
                [Some("messages"), Some("modules"), Some(module), None, None]
            }
            Self::ModuleOutput { module, output } => [
                Some("messages"),
                Some("modules"),
                Some(module),
                Some("outputs"),
                Some(output),
            ],
        };
        parts.into_iter().flatten()
    }

    /// The source as a path: `/messages/modules/m1/outputs/o1`.
    pub fn path(&self) -> String {
        self.segments().fold(String::new(), |mut path, s| {
            path.push('/');
            path.push_str(s);
            path
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// How many entries [`Properties::insert`] compared a key with, on this thread.
        pub(super) static SCANNED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn message(sys: &[(&str, &str)]) -> Message {
        Message {
            system_properties: sys.iter().copied().collect(),
            ..Message::default()
        }
    }

    #[test]
    fn keys_ignore_case_and_values_do_not() {
        let props: Properties = [("Key1", "Value")].into_iter().collect();
        assert_eq!(props.get("KEY1"), Some("Value"));
        assert_eq!(props.get("key"), None);
    }

    #[test]
    fn insert_replaces_a_key_that_differs_in_case() {
        let mut props = Properties::new();
        props.insert("a", "1");
        props.insert("A", "2");
        assert_eq!(props.len(), 1);
        assert_eq!(props.get("a"), Some("2"));
    }

    #[test]
    fn many_distinct_keys_insert_in_linear_time() {
        let started = std::time::Instant::now();
        let n = 20_000;
        let mut props = Properties::new();
        SCANNED.with(|s| s.set(0));
        for i in 0..n {
            props.insert(format!("k{i}"), i.to_string());
        }
        assert_eq!(props.len(), n);
        // A scan of the whole map per key compares ~n²/2 = 2·10⁸ times.
        let scanned = SCANNED.with(std::cell::Cell::get);
        assert!(scanned < 100_000, "{scanned} comparisons");
        // A sanity bound against a pathological slowdown (the quadratic scan took ~1 s here).
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        for i in [0, 1, n / 2, n - 1] {
            assert_eq!(props.get(&format!("K{i}")), Some(i.to_string().as_str()));
        }
        assert_eq!(props.get("k20000"), None);
        let keys: Vec<&str> = props.iter().map(|(k, _)| k).take(3).collect();
        assert_eq!(keys, ["k0", "k1", "k2"], "insertion order is kept");
    }

    #[test]
    fn the_last_duplicate_wins_in_small_and_large_maps() {
        for size in [3, INDEX_FROM - 1, INDEX_FROM, 3 * INDEX_FROM] {
            let mut props = Properties::new();
            for i in 0..size {
                props.insert(format!("key{i}"), "first");
            }
            props.insert("KEY1", "second");
            props.insert("Key1", "third");
            props.insert("zürich", "a");
            props.insert("ZÜRICH", "b");
            assert_eq!(props.len(), size + 1, "{size}");
            assert_eq!(props.get("key1"), Some("third"), "{size}");
            assert_eq!(props.get_key(&PropKey::new("ZüRICH")), Some("b"), "{size}");
            let second: Vec<(&str, &str)> = props.iter().skip(1).take(1).collect();
            assert_eq!(second, [("Key1", "third")], "the entry keeps its place");
            let rebuilt: Properties = props.iter().collect();
            assert_eq!(rebuilt, props);
        }
    }

    #[test]
    fn folding_agrees_with_keys_equal() {
        for (a, b) in [
            ("abc", "ABC"),
            ("zürich", "ZÜRICH"),
            ("zürich", "zurich"),
            ("ı", "I"),
            ("ſ", "S"),
            ("straße", "STRASSE"),
            ("$.CDID", "$.cdid"),
        ] {
            assert_eq!(keys_equal(a, b), fold(a) == fold(b), "{a} {b}");
            if keys_equal(a, b) {
                assert_eq!(folded_hash(a), folded_hash(b), "{a} {b}");
            }
        }
    }

    #[test]
    fn non_ascii_keys_fold_case() {
        assert!(keys_equal("zürich", "ZÜRICH"));
        assert!(!keys_equal("zürich", "zurich"));
    }

    #[test]
    fn source_follows_the_system_properties() {
        assert_eq!(message(&[]).source().path(), "/messages");
        assert_eq!(
            message(&[("connectionModuleId", "m1")]).source().path(),
            "/messages/modules/m1"
        );
        assert_eq!(
            message(&[("connectionModuleId", "m1"), ("outputName", "o1")])
                .source()
                .path(),
            "/messages/modules/m1/outputs/o1"
        );
        assert_eq!(
            message(&[
                ("connectionModuleId", "$edgeHub"),
                ("messageType", "TwinChangeNotification")
            ])
            .source()
            .path(),
            "/twinChangeNotifications"
        );
    }
}
