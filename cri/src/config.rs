//! crictl's JSON config files, read into the CRI messages.
//!
//! crictl decodes its files with Go's `encoding/json` into the generated structs: every
//! field may be left out and then takes its protobuf zero value (`"linux": {}` is a
//! `LinuxPodSandboxConfig` with everything unset). The serde derives that `k8s-cri`
//! generates require every non-`Option` field instead (`missing field cgroup_parent`),
//! so the files are read through [`Lenient`]: a deserializer over a `serde_json::Value`
//! that answers a missing or `null` field with the zero value its type asks for (an
//! empty string, 0, false, an empty list or map, an absent message), recursively. Field
//! names are the snake_case ones crictl's documentation uses; unknown fields are ignored,
//! as Go does. Errors name the path of the field (`linux.security_context.run_as_user`).

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess};
use serde::Deserializer;
use serde_json::{Error, Value};

/// Reads a CRI message from crictl-style JSON text.
pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    let value: Value = serde_json::from_str(text)?;
    if !value.is_object() {
        return Err(de::Error::custom("the config must be a JSON object"));
    }
    T::deserialize(Lenient {
        value: Some(&value),
        path: String::new(),
    })
}

/// A value that may be missing, and where it sits in the document (for errors).
struct Lenient<'a> {
    value: Option<&'a Value>,
    path: String,
}

impl<'a> Lenient<'a> {
    /// The value, or None when it is missing or `null` (both mean "zero" in proto3 JSON).
    fn present(&self) -> Option<&'a Value> {
        self.value.filter(|v| !v.is_null())
    }

    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn located(&self, e: Error) -> Error {
        if self.path.is_empty() {
            e
        } else {
            de::Error::custom(format_args!("{}: {e}", self.path))
        }
    }

    fn wrong_type(&self, found: &Value, expected: &str) -> Error {
        let kind = match found {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        };
        self.located(de::Error::custom(format_args!(
            "expected {expected}, found {kind}"
        )))
    }
}

/// Scalars: the JSON value's own deserializer when present, the zero value when not.
macro_rules! scalar {
    ($($method:ident => $zero:expr),* $(,)?) => {$(
        fn $method<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.present() {
                Some(v) => v.$method(visitor).map_err(|e| self.located(e)),
                None => {
                    let zero: fn(V) -> Result<V::Value, Error> = $zero;
                    zero(visitor)
                }
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for Lenient<'de> {
    type Error = Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.present() {
            Some(Value::Object(_)) => self.deserialize_map(visitor),
            Some(Value::Array(_)) => self.deserialize_seq(visitor),
            Some(v) => v.deserialize_any(visitor).map_err(|e| self.located(e)),
            None => visitor.visit_unit(),
        }
    }

    scalar! {
        deserialize_bool => |v| v.visit_bool(false),
        deserialize_i8 => |v| v.visit_i64(0),
        deserialize_i16 => |v| v.visit_i64(0),
        deserialize_i32 => |v| v.visit_i64(0),
        deserialize_i64 => |v| v.visit_i64(0),
        deserialize_u8 => |v| v.visit_u64(0),
        deserialize_u16 => |v| v.visit_u64(0),
        deserialize_u32 => |v| v.visit_u64(0),
        deserialize_u64 => |v| v.visit_u64(0),
        deserialize_f32 => |v| v.visit_f64(0.0),
        deserialize_f64 => |v| v.visit_f64(0.0),
        deserialize_char => |v| v.visit_char('\0'),
        deserialize_str => |v| v.visit_str(""),
        deserialize_string => |v| v.visit_str(""),
        deserialize_bytes => |v| v.visit_bytes(&[]),
        deserialize_byte_buf => |v| v.visit_bytes(&[]),
        deserialize_unit => |v| v.visit_unit(),
        deserialize_identifier => |v| v.visit_str(""),
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.present().is_some() {
            visitor.visit_some(self)
        } else {
            visitor.visit_none()
        }
    }

    fn deserialize_unit_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.present() {
            None => visitor.visit_seq(Items {
                items: [].iter(),
                index: 0,
                path: self.path,
            }),
            Some(Value::Array(items)) => visitor.visit_seq(Items {
                items: items.iter(),
                index: 0,
                path: self.path,
            }),
            Some(other) => Err(self.wrong_type(other, "an array")),
        }
    }

    fn deserialize_tuple<V: de::Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_struct("", &[], visitor)
    }

    /// A message: the fields given, then every field not given, as missing. For a map
    /// (`fields` empty) only the entries given.
    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let given = match self.present() {
            None => None,
            Some(Value::Object(map)) => Some(map),
            Some(other) => return Err(self.wrong_type(other, "an object")),
        };
        let mut entries: Vec<(&'de str, Option<&'de Value>)> = given
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), Some(v)))
            .collect();
        for field in fields {
            if !given.is_some_and(|m| m.contains_key(*field)) {
                entries.push((field, None));
            }
        }
        visitor.visit_map(Entries {
            entries: entries.into_iter(),
            pending: None,
            parent: self,
        })
    }

    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.present() {
            Some(v) => v
                .deserialize_enum(name, variants, visitor)
                .map_err(|e| self.located(e)),
            None => Err(self.located(de::Error::custom("a value is required here"))),
        }
    }

    fn deserialize_ignored_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

struct Items<'a> {
    items: std::slice::Iter<'a, Value>,
    index: usize,
    path: String,
}

impl<'de> SeqAccess<'de> for Items<'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{}]", self.path, self.index);
        self.index += 1;
        seed.deserialize(Lenient {
            value: Some(item),
            path,
        })
        .map(Some)
    }
}

struct Entries<'a, I> {
    entries: I,
    pending: Option<(&'a str, Option<&'a Value>)>,
    parent: Lenient<'a>,
}

impl<'de, I> MapAccess<'de> for Entries<'de, I>
where
    I: Iterator<Item = (&'de str, Option<&'de Value>)>,
{
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.pending = Some(entry);
        let key: de::value::StrDeserializer<'_, Error> = entry.0.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        let (key, value) = self
            .pending
            .take()
            .ok_or_else(|| <Error as de::Error>::custom("a value without its key"))?;
        seed.deserialize(Lenient {
            value,
            path: self.parent.child(key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};

    #[test]
    fn crictl_pod_config_with_fields_left_out() {
        let pod: PodSandboxConfig = from_json(
            r#"{"metadata":{"name":"p","namespace":"default","uid":"u1","attempt":0},
                "log_directory":"/tmp/x","linux":{},"annotations":{"lightwhale.io/sleep":"off"}}"#,
        )
        .expect("parses");
        let meta = pod.metadata.expect("metadata");
        assert_eq!((meta.name.as_str(), meta.uid.as_str()), ("p", "u1"));
        assert_eq!(pod.log_directory, "/tmp/x");
        assert_eq!(pod.annotations["lightwhale.io/sleep"], "off");
        let linux = pod.linux.expect("linux is given, empty");
        assert_eq!(linux.cgroup_parent, "");
        assert!(linux.security_context.is_none());
        assert!(pod.dns_config.is_none());
        assert!(pod.port_mappings.is_empty());
    }

    #[test]
    fn crictl_container_config() {
        let c: ContainerConfig = from_json(
            r#"{"metadata":{"name":"c"},"image":{"image":"docker.io/x/busybox:latest"},
                "command":["httpd","-f"],"log_path":"c.log","linux":{"resources":null},
                "envs":[{"key":"A","value":"1"}],"unknown_field":{"x":1}}"#,
        )
        .expect("parses");
        assert_eq!(c.metadata.expect("metadata").attempt, 0);
        assert_eq!(c.image.expect("image").image, "docker.io/x/busybox:latest");
        assert_eq!(c.command, ["httpd", "-f"]);
        assert_eq!(c.envs[0].key, "A");
        assert!(c.linux.expect("linux").resources.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let e = from_json::<PodSandboxConfig>(r#"{"metadata":{"attempt":"one"}}"#)
            .expect_err("a string is no attempt");
        assert!(e.to_string().contains("metadata.attempt"), "{e}");
        let e = from_json::<ContainerConfig>(r#"{"command":"httpd"}"#).expect_err("not a list");
        assert!(e.to_string().contains("command: expected an array"), "{e}");
        let e = from_json::<ContainerConfig>(r#"{"envs":[{"key":1}]}"#).expect_err("bad key");
        assert!(e.to_string().contains("envs[0].key"), "{e}");
        assert!(from_json::<ContainerConfig>("[1]").is_err());
        assert!(from_json::<ContainerConfig>("{").is_err());
        assert!(from_json::<ContainerConfig>(r#"{"metadata":{"attempt":-1}}"#).is_err());
    }
}
