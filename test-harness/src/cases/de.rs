//! A serde [`Deserializer`](serde::Deserializer) over the positioned YAML tree, so case
//! files are read by derived structs and every error still carries its line and column.
//!
//! An error takes the position of the innermost node it passed through (a key's for an
//! unknown field, a value's for a wrong type, a mapping's for a missing field). Three
//! loose types keep what the derived structs need and serde's data model drops:
//! [`Spanned`] (where a value and its key were written), [`Entries`] (a mapping's entries
//! in file order, with their keys' positions) and [`Scalar`] (any value, kept as written,
//! for checks whose messages say what was found).

use gatehouse_core::policy::tree::{Key, Node, Pos, Value};
use serde::de::{self, Deserialize, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::forward_to_deserialize_any;
use std::fmt;
use std::marker::PhantomData;

/// What went wrong, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub pos: Option<Pos>,
    pub message: String,
    /// serde's own messages ("expected a string, found ...") do not say what was being
    /// read: the key the value was written under is put in front of them.
    needs_subject: bool,
    /// For an unknown field: where ` in <mapping's key>` goes in the message.
    parent_at: Option<usize>,
}

impl Error {
    fn generic(message: String) -> Self {
        Error {
            pos: None,
            message,
            needs_subject: true,
            parent_at: None,
        }
    }

    /// Gives the error the position of `pos` (and the subject `key`) if it has none yet.
    fn place(mut self, pos: Option<Pos>, key: Option<&Key>) -> Self {
        if self.pos.is_none() {
            self.pos = pos;
            if let (true, Some(key)) = (self.needs_subject, key) {
                self.message = format!("{}: {}", key.name, self.message);
            }
            self.needs_subject = false;
        }
        self
    }

    /// Places an error raised by a key: an unknown field also names the mapping's key.
    fn place_key(mut self, pos: Option<Pos>, parent: Option<&Key>) -> Self {
        if let (None, Some(at), Some(parent)) = (self.pos, self.parent_at, parent)
            && self.message.is_char_boundary(at)
        {
            self.message.insert_str(at, &format!(" in {}", parent.name));
        }
        self.parent_at = None;
        self.place(pos, None)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            pos: None,
            message: msg.to_string(),
            needs_subject: false,
            parent_at: None,
        }
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Error::generic(format!("expected {exp}, found {}", found(unexp)))
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Error::generic(format!("expected {exp}, found {}", found(unexp)))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let mut e = Error::custom(format!(
            "unknown field '{field}'; expected one of [{}]",
            expected.join(", ")
        ));
        e.parent_at = Some("unknown field ''".len() + field.len());
        e
    }

    fn missing_field(field: &'static str) -> Self {
        Error::generic(format!("missing field '{field}'"))
    }
}

/// What was found, in the words of the tree's own messages where serde's differ.
fn found(unexp: de::Unexpected<'_>) -> String {
    match unexp {
        de::Unexpected::Unit => Value::Null.kind().to_string(),
        de::Unexpected::Seq => Value::Seq(Vec::new()).kind().to_string(),
        de::Unexpected::Map => Value::Map(Vec::new()).kind().to_string(),
        other => other.to_string(),
    }
}

/// Reads `T` from a node of the tree, written under `key` if it is a mapping's value.
pub fn from_node<'de, T: Deserialize<'de>>(
    key: Option<&'de Key>,
    node: &'de Node,
) -> Result<T, Error> {
    T::deserialize(NodeDe {
        node,
        key,
        subject: key,
    })
    .map_err(|e| e.place(node.pos, key))
}

/// A value and where it (and the key it was written under, if any) stands in the file.
#[derive(Clone, Debug)]
pub struct Spanned<T> {
    pub pos: Option<Pos>,
    pub key_pos: Option<Pos>,
    pub value: T,
}

/// The struct name by which [`Spanned`] asks this deserializer for positions; other
/// deserializers do not know it and refuse it.
const SPANNED: &str = "$gatehouse::Spanned";
const SPANNED_FIELDS: [&str; 5] = ["line", "column", "key_line", "key_column", "value"];

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Spanned<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value with its position")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Spanned<T>, A::Error> {
                let mut n = [0usize; 4];
                for slot in &mut n {
                    *slot = map
                        .next_entry::<de::IgnoredAny, usize>()?
                        .map(|(_, v)| v)
                        .unwrap_or_default();
                }
                let value = match map.next_entry::<de::IgnoredAny, T>()? {
                    Some((_, v)) => v,
                    None => return Err(de::Error::missing_field("value")),
                };
                let pos = |line, column| (line > 0).then_some(Pos { line, column });
                Ok(Spanned {
                    pos: pos(n[0], n[1]),
                    key_pos: pos(n[2], n[3]),
                    value,
                })
            }
        }
        d.deserialize_struct(SPANNED, &SPANNED_FIELDS, V(PhantomData))
    }
}

/// A mapping's entries in file order, each key with its position.
#[derive(Clone, Debug)]
pub struct Entries<T>(pub Vec<(Spanned<String>, T)>);

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<T>, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// Any value, kept as written: scalars as they are, the rest by kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// `null`, a list or a mapping, by the name messages give it.
    Other(&'static str),
}

impl Scalar {
    /// The scalar as text (`12`, `true`, `x`); `None` for null, lists and mappings.
    pub fn text(&self) -> Option<String> {
        match self {
            Scalar::Str(s) => Some(s.clone()),
            Scalar::Int(i) => Some(i.to_string()),
            Scalar::Float(f) => Some(f.to_string()),
            Scalar::Bool(b) => Some(b.to_string()),
            Scalar::Other(_) => None,
        }
    }

    /// The value as messages show it: quoted text, a number, or its kind.
    pub fn shown(&self) -> String {
        match self {
            Scalar::Str(s) => format!("'{s}'"),
            Scalar::Other(kind) => (*kind).to_string(),
            other => other.text().unwrap_or_default(),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(i))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(f))
            }
            fn visit_str<E>(self, s: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(s.to_string()))
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other(Value::Null.kind()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other(Value::Seq(Vec::new()).kind()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Scalar::Other(Value::Map(Vec::new()).kind()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A node, and the key it was written under (for positions and messages).
struct NodeDe<'de> {
    node: &'de Node,
    key: Option<&'de Key>,
    /// What its errors name: its key, or for a list's item the list's key.
    subject: Option<&'de Key>,
}

impl<'de> NodeDe<'de> {
    fn unexpected(&self) -> de::Unexpected<'de> {
        match &self.node.value {
            Value::Null => de::Unexpected::Unit,
            Value::Bool(b) => de::Unexpected::Bool(*b),
            Value::Int(i) => de::Unexpected::Signed(*i),
            Value::Float(f) => de::Unexpected::Float(*f),
            Value::Str(s) => de::Unexpected::Str(s),
            Value::Seq(_) => de::Unexpected::Seq,
            Value::Map(_) => de::Unexpected::Map,
        }
    }

    fn any<V: Visitor<'de>>(&self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Seq(items) => visitor.visit_seq(SeqDe(items.iter(), self.subject)),
            Value::Map(entries) => visitor.visit_map(MapDe {
                entries: entries.iter(),
                value: None,
                parent: self.key,
            }),
        }
    }
}

impl<'de> de::Deserializer<'de> for NodeDe<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.any(visitor)
            .map_err(|e| e.place(self.node.pos, self.subject))
    }

    /// A field that is present is never `None`: `field: ~` is refused, not ignored.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (pos, key) = (self.node.pos, self.subject);
        visitor.visit_some(self).map_err(|e| e.place(pos, key))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let (pos, key) = (self.node.pos, self.subject);
        visitor
            .visit_newtype_struct(self)
            .map_err(|e| e.place(pos, key))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let (pos, key) = (self.node.pos, self.subject);
        let result = if name == SPANNED {
            let key_pos = self.key.and_then(|k| k.pos);
            visitor.visit_map(SpanAccess::new(pos, key_pos, self))
        } else if let Value::Map(_) = self.node.value {
            self.any(visitor)
        } else {
            // Derived structs also take a list of their fields in order; a case file
            // does not.
            Err(de::Error::invalid_type(self.unexpected(), &visitor))
        };
        result.map_err(|e| e.place(pos, key))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// A list's items, and the key the list was written under.
struct SeqDe<'de>(std::slice::Iter<'de, Node>, Option<&'de Key>);

impl<'de> de::SeqAccess<'de> for SeqDe<'de> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        match self.0.next() {
            // An item's errors name the list's key.
            Some(node) => seed
                .deserialize(NodeDe {
                    node,
                    key: None,
                    subject: self.1,
                })
                .map(Some)
                .map_err(|e| e.place(node.pos, self.1)),
            None => Ok(None),
        }
    }
}

struct MapDe<'de> {
    entries: std::slice::Iter<'de, (Key, Node)>,
    value: Option<(&'de Key, &'de Node)>,
    /// The key the mapping was written under.
    parent: Option<&'de Key>,
}

impl<'de> MapAccess<'de> for MapDe<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, node)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some((key, node));
        seed.deserialize(KeyDe(key, self.parent)).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        match self.value.take() {
            // The value's own `Deserialize` may refuse it after reading it: placed here.
            Some((key, node)) => seed
                .deserialize(NodeDe {
                    node,
                    key: Some(key),
                    subject: Some(key),
                })
                .map_err(|e| e.place(node.pos, Some(key))),
            None => Err(de::Error::custom("a mapping value was read before its key")),
        }
    }
}

/// A mapping key (a string with its own position), and the key of its mapping.
struct KeyDe<'de>(&'de Key, Option<&'de Key>);

impl<'de> de::Deserializer<'de> for KeyDe<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor
            .visit_borrowed_str(&self.0.name)
            .map_err(|e: Error| e.place_key(self.0.pos, self.1))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let (pos, parent) = (self.0.pos, self.1);
        if name == SPANNED {
            visitor
                .visit_map(SpanAccess::new(pos, None, self))
                .map_err(|e| e.place_key(pos, parent))
        } else {
            self.deserialize_any(visitor)
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct
        map enum identifier ignored_any
    }
}

/// What a [`Spanned`] reads: the four numbers of its positions (0 when unknown), then
/// the value itself from `value`.
struct SpanAccess<D> {
    numbers: std::vec::IntoIter<usize>,
    value: Option<D>,
    field: usize,
}

impl<D> SpanAccess<D> {
    fn new(pos: Option<Pos>, key_pos: Option<Pos>, value: D) -> Self {
        let (line, column) = pos.map_or((0, 0), |p| (p.line, p.column));
        let (key_line, key_column) = key_pos.map_or((0, 0), |p| (p.line, p.column));
        SpanAccess {
            numbers: vec![line, column, key_line, key_column].into_iter(),
            value: Some(value),
            field: 0,
        }
    }
}

impl<'de, D: de::Deserializer<'de, Error = Error>> MapAccess<'de> for SpanAccess<D> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(name) = SPANNED_FIELDS.get(self.field) else {
            return Ok(None);
        };
        self.field += 1;
        seed.deserialize(name.into_deserializer()).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        match self.numbers.next() {
            Some(n) => seed.deserialize(n.into_deserializer()),
            None => match self.value.take() {
                Some(d) => seed.deserialize(d),
                None => Err(de::Error::custom("a position was read twice")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use gatehouse_core::policy::yaml;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Door {
        name: String,
        width: Option<Spanned<Scalar>>,
        #[serde(default)]
        tags: Vec<String>,
    }

    fn read(src: &str) -> Result<Door, Error> {
        let node = yaml::parse(src).unwrap();
        from_node::<Door>(None, Box::leak(Box::new(node)))
    }

    #[test]
    fn a_struct_is_read_with_positions() {
        let d = read("name: front\nwidth: 90\ntags: [a]\n").unwrap();
        assert_eq!(d.name, "front");
        let w = d.width.unwrap();
        assert_eq!(w.value, Scalar::Int(90));
        assert_eq!(w.pos, Some(Pos { line: 2, column: 8 }));
        assert_eq!(w.key_pos, Some(Pos { line: 2, column: 1 }));
        assert_eq!(d.tags, vec!["a".to_string()]);
    }

    #[test]
    fn an_unknown_field_is_refused_at_its_key_with_the_allowed_fields() {
        let e = read("name: x\nwidht: 3\n").unwrap_err();
        assert_eq!(e.pos, Some(Pos { line: 2, column: 1 }));
        assert_eq!(
            e.message,
            "unknown field 'widht'; expected one of [name, width, tags]"
        );
    }

    #[test]
    fn an_unknown_field_names_the_key_its_mapping_is_under() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct House {
            #[allow(dead_code)]
            door: Door,
        }
        let node = Box::leak(Box::new(
            yaml::parse("door: { name: x, colour: red }\n").unwrap(),
        ));
        let e = from_node::<House>(None, node).unwrap_err();
        assert_eq!(
            e.pos,
            Some(Pos {
                line: 1,
                column: 18
            })
        );
        assert_eq!(
            e.message,
            "unknown field 'colour' in door; expected one of [name, width, tags]"
        );
    }

    #[test]
    fn a_wrong_type_is_refused_at_the_value_and_names_its_key() {
        let e = read("name: x\ntags: [a, [b]]\n").unwrap_err();
        assert_eq!(
            e.pos,
            Some(Pos {
                line: 2,
                column: 11
            })
        );
        assert_eq!(e.message, "tags: expected a string, found a list");
        let e = read("name: 12\n").unwrap_err();
        assert_eq!(e.pos, Some(Pos { line: 1, column: 7 }));
        assert_eq!(e.message, "name: expected a string, found integer `12`");
    }

    #[test]
    fn a_missing_field_is_refused_at_its_mapping_and_null_is_not_absent() {
        let e = read("width: 1\n").unwrap_err();
        assert_eq!(e.pos, Some(Pos { line: 1, column: 1 }));
        assert_eq!(e.message, "missing field 'name'");
        let e = read("name: x\nwidth: ~\n").unwrap();
        assert_eq!(e.width.unwrap().value, Scalar::Other("null"));
        assert!(read("name: ~\n").is_err());
    }

    #[test]
    fn a_list_is_not_read_as_a_struct() {
        let e = read("[x, 1]\n").unwrap_err();
        assert_eq!(e.pos, Some(Pos { line: 1, column: 1 }));
        assert!(e.message.starts_with("expected struct Door"), "{e}");
    }
}
