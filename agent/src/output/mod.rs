//! Output records and their text forms.
//!
//! A record is an ordered list of fields, because users diff HaIS's output against the
//! JA4+ reference tool's, and that means the same keys in the same order: serde structs
//! can't rename `ja4` to `ja4_o` on a flag, so records are built as [`Value`] trees and
//! printed by the small JSON and YAML writers below.

mod json;
mod sorter;
mod yaml;

pub use json::write_json_line;
pub use sorter::{RecordSorter, SortKey};
pub use yaml::write_yaml_list_item;

/// A JSON/YAML value with ordered maps.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(u64),
    Str(String),
    List(Vec<Value>),
    Map(Map),
}

/// An ordered map; keys are unique by construction of the callers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Map(pub Vec<(String, Value)>);

impl Map {
    pub fn new() -> Self {
        Map(Vec::new())
    }

    pub fn push(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.0.push((key.into(), value.into()));
    }

    /// Adds the field only when there is a value.
    pub fn push_opt<V: Into<Value>>(&mut self, key: impl Into<String>, value: Option<V>) {
        if let Some(v) = value {
            self.push(key, v);
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Int(n)
    }
}

impl From<u16> for Value {
    fn from(n: u16) -> Self {
        Value::Int(u64::from(n))
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Self {
        Value::Map(m)
    }
}

impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Self {
        Value::List(l)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::Null, Into::into)
    }
}
