//! JSON-RPC messages as text, for the direct path: an object's members borrowed from
//! the message, and values replaced where they stand. A relayed call changes only its
//! id (and progress token) on the way up and its id on the way back; everything else
//! passes byte for byte, without building a `serde_json::Value` tree of the message
//! and writing it out again (which, for a tool's large result, cost more than the
//! rest of the call).

use std::{fmt, ops::Range};

use serde::{
    de::{Error as _, MapAccess, Visitor},
    Deserialize, Deserializer,
};
use serde_json::value::RawValue;

/// More members than this, or a longer name, and a message is read as a tree instead
/// (messages have a handful of short names; the duplicate check below is quadratic).
const MAX_MEMBERS: usize = 64;
const MAX_NAME_BYTES: usize = 256;

/// Nested deeper than this and a message is read as a tree instead, which refuses
/// what is too deep (serde_json stops at 128): nothing passes on the text path that
/// the tree would have refused, to an upstream whose parser may recurse without end.
const MAX_DEPTH: usize = 100;

/// The members of one JSON object, in order, each value as its text in the message.
/// Refused (so the caller falls back to a full parse): anything but an object, a
/// name written with escapes or outside ASCII, two names that are one to a parser
/// that ignores case, more than [`MAX_MEMBERS`] members or a name longer than
/// [`MAX_NAME_BYTES`].
///
/// Why case: the gateway decides on `params.name` as it reads it, and the upstream
/// runs what its own parser reads. Go's `encoding/json` matches names by Unicode case
/// folding and keeps the last, so `{"name":"list","NAME":"delete"}` would be checked
/// as one tool and run as another. The relay re-serialises through rmcp's types,
/// which keep only the exact names.
pub struct Members<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'a> Members<'a> {
    /// The members of a whole message, nested at most [`MAX_DEPTH`] deep.
    pub fn parse(text: &'a [u8]) -> Option<Self> {
        if !within_depth(text) {
            return None;
        }
        serde_json::from_slice(text).ok()
    }

    /// The members of the object `value`, when it is one.
    pub fn of(value: &'a RawValue) -> Option<Self> {
        serde_json::from_str(value.get()).ok()
    }

    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn names(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.0.iter().map(|(k, _)| *k)
    }

    /// Whether a member is `name` to a parser that ignores case but not to one that
    /// does not (`_META` for `_meta`): the two would read the message differently.
    pub fn loosely(&self, name: &str) -> bool {
        self.names()
            .any(|k| k != name && k.eq_ignore_ascii_case(name))
    }
}

/// A member's value as a string without escapes: `None` when absent, `Some(None)`
/// when it is anything else.
pub fn plain_str(value: Option<&RawValue>) -> Option<Option<&str>> {
    value.map(|v| serde_json::from_str::<&str>(v.get()).ok())
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members: Vec<(&'de str, &'de RawValue)> = Vec::with_capacity(6);
                while let Some((name, value)) = map.next_entry::<&'de str, &'de RawValue>()? {
                    if members.len() == MAX_MEMBERS {
                        return Err(A::Error::custom("too many members"));
                    }
                    if name.len() > MAX_NAME_BYTES {
                        return Err(A::Error::custom("a member name is too long"));
                    }
                    // A name outside ASCII goes to the tree: Unicode case folding
                    // (`ſ` is `s` and the Kelvin sign `k` to Go) cost allocations
                    // per pair of names, quadratic in the members of a message that
                    // is read before its token is checked.
                    if !name.is_ascii() {
                        return Err(A::Error::custom("a member name is not ASCII"));
                    }
                    if members
                        .iter()
                        .any(|(seen, _)| seen.eq_ignore_ascii_case(name))
                    {
                        return Err(A::Error::custom("a member is named twice"));
                    }
                    members.push((name, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

/// Whether `text`'s objects and arrays nest at most [`MAX_DEPTH`] deep (brackets in
/// strings do not count).
fn within_depth(text: &[u8]) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Where `value`, borrowed from `text`, stands in it.
pub fn span(text: &[u8], value: &RawValue) -> Option<Range<usize>> {
    let start = (value.get().as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let end = start.checked_add(value.get().len())?;
    (end <= text.len()).then_some(start..end)
}

/// `text` with each span replaced by its new text. The spans must be in order and
/// apart; `None` when they are not.
pub fn splice(text: &[u8], replacements: &[(Range<usize>, &[u8])]) -> Option<Vec<u8>> {
    let added: usize = replacements.iter().map(|(_, new)| new.len()).sum();
    let mut out = Vec::with_capacity(text.len() + added);
    let mut at = 0;
    for (span, new) in replacements {
        if span.start < at || span.end > text.len() || span.start > span.end {
            return None;
        }
        out.extend_from_slice(&text[at..span.start]);
        out.extend_from_slice(new);
        at = span.end;
    }
    out.extend_from_slice(&text[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_borrowed_and_values_replaced_in_place() {
        let text =
            br#"{ "jsonrpc":"2.0", "id" : 17, "params":{"x":[1, 2]}, "vendor":{"a":"\u00e9"} }"#;
        let members = Members::parse(text).expect("an object");
        assert_eq!(
            members.names().collect::<Vec<_>>(),
            ["jsonrpc", "id", "params", "vendor"]
        );
        assert_eq!(plain_str(members.get("jsonrpc")), Some(Some("2.0")));
        assert_eq!(plain_str(members.get("id")), Some(None));
        assert_eq!(plain_str(members.get("method")), None);
        let id = span(text, members.get("id").expect("id")).expect("span");
        assert_eq!(&text[id.clone()], b"17");
        let params = Members::of(members.get("params").expect("params")).expect("object");
        let x = span(text, params.get("x").expect("x")).expect("span");
        assert_eq!(&text[x.clone()], b"[1, 2]");
        let spliced = splice(text, &[(id, br#""ours-1""#), (x, b"null")]).expect("in order");
        assert_eq!(
            spliced,
            br#"{ "jsonrpc":"2.0", "id" : "ours-1", "params":{"x":null}, "vendor":{"a":"\u00e9"} }"#
        );
    }

    #[test]
    fn what_the_text_path_cannot_be_sure_of_is_refused() {
        // Not an object; a repeated member (which a tree would keep the last of); a
        // name with escapes; too many members.
        assert!(Members::parse(b"[1]").is_none());
        assert!(Members::parse(br#"{"id":1,"id":2}"#).is_none());
        assert!(Members::parse(br#"{"\u0069d":1}"#).is_none());
        let many: String = (0..=MAX_MEMBERS).map(|i| format!("\"m{i}\":0,")).collect();
        assert!(Members::parse(format!("{{{}\"last\":0}}", many).as_bytes()).is_none());
        assert!(Members::parse(br#"{"id":1,"#).is_none());
        // Names that are one to a parser that ignores case (Go's): the gateway would
        // check one tool and the upstream run another.
        assert!(Members::parse(br#"{"name":"list","NAME":"delete"}"#).is_none());
        assert!(Members::parse("{\"params\":1,\"param\u{17f}\":2}".as_bytes()).is_none());
        assert!(Members::parse("{\"kind\":1,\"\u{212a}ind\":2}".as_bytes()).is_none());
        assert!(Members::parse(br#"{"name":1,"names":2}"#).is_some());
        // Outside ASCII, even alone: folding such names cost too much.
        assert!(Members::parse("{\"caf\u{e9}\":1}".as_bytes()).is_none());
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        assert!(Members::parse(format!("{{\"{long}\":1}}").as_bytes()).is_none());
        // Deeper than a tree would take; brackets inside strings do not count.
        let deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert!(Members::parse(deep.as_bytes()).is_none());
        let shallow = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(Members::parse(shallow.as_bytes()).is_some());
        let quoted = format!("{{\"a\":\"{}\\\"\"}}", "[".repeat(MAX_DEPTH * 2));
        assert!(Members::parse(quoted.as_bytes()).is_some(), "{quoted}");
        // Spans out of order are refused.
        assert!(splice(b"abcdef", &[(3..4, b"x"), (1..2, b"y")]).is_none());
    }
}
