//! Test support: the keys a `Deserialize` type accepts, asked of serde's
//! derive itself. A derived struct names all its fields to the deserializer
//! (`deserialize_struct`), so walking them with a probe finds every key,
//! nested tables included, without a hand-copied list that could drift.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde::de::value::{Error, SeqDeserializer, StrDeserializer};
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

/// Every leaf key of `T` as a dotted path (`source.queries.list_query`).
pub fn keys<T: DeserializeOwned>() -> BTreeSet<String> {
    let found = RefCell::new(BTreeSet::new());
    T::deserialize(Probe {
        path: String::new(),
        found: &found,
    })
    .expect("the probe gives every field a value of its type");
    found.into_inner()
}

/// Deserializes one value at `path`: a struct is walked field by field,
/// anything else is a leaf key, recorded and given an empty value.
struct Probe<'a> {
    path: String,
    found: &'a RefCell<BTreeSet<String>>,
}

impl Probe<'_> {
    fn leaf(&self) {
        self.found.borrow_mut().insert(self.path.clone());
    }
}

fn name(s: &'static str) -> StrDeserializer<'static, Error> {
    s.into_deserializer()
}

macro_rules! leaf {
    ($($method:ident => |$v:ident| $value:expr;)*) => {$(
        fn $method<V: Visitor<'de>>(self, $v: V) -> Result<V::Value, Error> {
            self.leaf();
            $value
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Error;

    leaf! {
        deserialize_bool => |v| v.visit_bool(false);
        deserialize_u8 => |v| v.visit_u64(0);
        deserialize_u16 => |v| v.visit_u64(0);
        deserialize_u32 => |v| v.visit_u64(0);
        deserialize_u64 => |v| v.visit_u64(0);
        deserialize_i8 => |v| v.visit_i64(0);
        deserialize_i16 => |v| v.visit_i64(0);
        deserialize_i32 => |v| v.visit_i64(0);
        deserialize_i64 => |v| v.visit_i64(0);
        deserialize_f32 => |v| v.visit_f64(0.0);
        deserialize_f64 => |v| v.visit_f64(0.0);
        deserialize_str => |v| v.visit_str("");
        deserialize_string => |v| v.visit_str("");
        deserialize_seq => |v| v.visit_seq(SeqDeserializer::new(std::iter::empty::<u8>()));
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_some(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.leaf();
        let first = variants
            .first()
            .ok_or_else(|| de::Error::custom("enum without variants"))?;
        v.visit_enum(name(first))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_map(Fields {
            probe: self,
            fields: fields.iter(),
            current: "",
        })
    }

    fn deserialize_any<V: Visitor<'de>>(self, _v: V) -> Result<V::Value, Error> {
        Err(de::Error::custom(format!(
            "{}: only the types a config uses are probed",
            self.path
        )))
    }

    serde::forward_to_deserialize_any! {
        char bytes byte_buf unit unit_struct newtype_struct tuple tuple_struct map
        identifier ignored_any i128 u128
    }
}

/// A struct's fields, each key followed by its probed value.
struct Fields<'a> {
    probe: Probe<'a>,
    fields: std::slice::Iter<'static, &'static str>,
    current: &'static str,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = field;
        seed.deserialize(name(field)).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let path = match self.probe.path.as_str() {
            "" => self.current.to_string(),
            p => format!("{p}.{}", self.current),
        };
        seed.deserialize(Probe {
            path,
            found: self.probe.found,
        })
    }
}
