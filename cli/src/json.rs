//! A minimal JSON writer (the CLI has no dependency beyond std, libc and rseqrt).

use std::fmt::Write;

#[derive(Clone, Debug)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn obj() -> Json {
        Json::Obj(Vec::new())
    }

    /// Adds a key to an object (builder style).
    pub fn with(mut self, key: &str, value: impl Into<Json>) -> Json {
        self.set(key, value);
        self
    }

    pub fn set(&mut self, key: &str, value: impl Into<Json>) {
        if let Json::Obj(fields) = self {
            fields.push((key.to_string(), value.into()));
        }
    }

    pub fn pretty(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, 0);
        s.push('\n');
        s
    }

    fn write(&self, s: &mut String, indent: usize) {
        let pad = |s: &mut String, n: usize| s.push_str(&" ".repeat(n));
        match self {
            Json::Null => s.push_str("null"),
            Json::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => write!(s, "{i}").unwrap(),
            Json::Num(x) if x.is_finite() => {
                if x.fract() == 0.0 && x.abs() < 1e15 {
                    write!(s, "{x:.1}").unwrap()
                } else {
                    write!(s, "{x}").unwrap()
                }
            }
            Json::Num(_) => s.push_str("null"),
            Json::Str(t) => quote(s, t),
            Json::Arr(items) if items.is_empty() => s.push_str("[]"),
            Json::Arr(items) => {
                s.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    pad(s, indent + 2);
                    item.write(s, indent + 2);
                    s.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                pad(s, indent);
                s.push(']');
            }
            Json::Obj(fields) if fields.is_empty() => s.push_str("{}"),
            Json::Obj(fields) => {
                s.push_str("{\n");
                for (i, (k, v)) in fields.iter().enumerate() {
                    pad(s, indent + 2);
                    quote(s, k);
                    s.push_str(": ");
                    v.write(s, indent + 2);
                    s.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
                }
                pad(s, indent);
                s.push('}');
            }
        }
    }
}

fn quote(s: &mut String, t: &str) {
    s.push('"');
    for c in t.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => write!(s, "\\u{:04x}", c as u32).unwrap(),
            c => s.push(c),
        }
    }
    s.push('"');
}

impl From<bool> for Json {
    fn from(b: bool) -> Json {
        Json::Bool(b)
    }
}
impl From<i64> for Json {
    fn from(i: i64) -> Json {
        Json::Int(i)
    }
}
impl From<i32> for Json {
    fn from(i: i32) -> Json {
        Json::Int(i.into())
    }
}
impl From<u32> for Json {
    fn from(i: u32) -> Json {
        Json::Int(i.into())
    }
}
impl From<usize> for Json {
    fn from(i: usize) -> Json {
        Json::Int(i as i64)
    }
}
impl From<f64> for Json {
    fn from(x: f64) -> Json {
        Json::Num(x)
    }
}
impl From<&str> for Json {
    fn from(t: &str) -> Json {
        Json::Str(t.to_string())
    }
}
impl From<String> for Json {
    fn from(t: String) -> Json {
        Json::Str(t)
    }
}
impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(o: Option<T>) -> Json {
        o.map_or(Json::Null, Into::into)
    }
}
impl<T: Into<Json>> From<Vec<T>> for Json {
    fn from(v: Vec<T>) -> Json {
        Json::Arr(v.into_iter().map(Into::into).collect())
    }
}
