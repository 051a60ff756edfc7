//! [`Params`] as a flat JSON object, exactly.
//!
//! Parameters cross the C ABI as UTF-8 text so a plugin written in any language can read them
//! with its own JSON library. This crate writes and reads that text itself rather than through
//! `serde_json`, for two reasons: `tenpak-api` stays free of it, and the floats must cross
//! *bit for bit*, because a codec loaded from a library has to produce the same bytes as the same
//! codec linked statically. Floats are written in Rust's shortest round-trip form and read with
//! the standard library's correctly rounded parser; `serde_json`'s default float parser is only
//! best-effort (it can be one unit in the last place off on long mantissas).
//!
//! The grammar is JSON restricted to one object of scalars: `{"key": value, ...}` where a value
//! is `true`, `false`, an integer (→ [`ParamValue::Int`], must fit `i64`), a number with a
//! fraction or exponent (→ [`ParamValue::Float`]) or a string. `null`, arrays and nested objects
//! are refused, as are duplicate keys. NaN and infinities have no JSON spelling, so a parameter
//! holding one cannot cross and is refused when written.

use std::fmt::Write as _;

use crate::{Error, ParamValue, Params, Result};

/// Write `params` as a flat JSON object. Fails on a NaN or infinite float, naming the key.
pub fn params_to_json(params: &Params) -> Result<String> {
    let mut out = String::from("{");
    for (i, (key, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(&mut out, key);
        out.push(':');
        match value {
            ParamValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            ParamValue::Int(v) => {
                let _ = write!(out, "{v}");
            }
            ParamValue::Float(v) if !v.is_finite() => {
                return Err(Error::invalid_param(format!(
                    "parameter `{key}` is {v}, which cannot cross the plugin ABI (JSON has no NaN or infinity)"
                )));
            }
            ParamValue::Float(v) => {
                // `{:?}` is the shortest text that reads back to the same bits, and always has
                // a `.` or an exponent, so it reads back as a float, not an int.
                let _ = write!(out, "{v:?}");
            }
            ParamValue::Str(s) => write_string(&mut out, s),
        }
    }
    out.push('}');
    Ok(out)
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Read a flat JSON object written by [`params_to_json`] (or by any JSON writer, as long as it
/// holds only scalars). Errors say what was found where.
pub fn params_from_json(text: &str) -> Result<Params> {
    let mut p = Parser { text, pos: 0 };
    let mut params = Params::new();
    p.skip_ws();
    p.expect(b'{')?;
    p.skip_ws();
    if p.peek() == Some(b'}') {
        p.pos += 1;
    } else {
        loop {
            p.skip_ws();
            let key = p.string()?;
            p.skip_ws();
            p.expect(b':')?;
            p.skip_ws();
            let value = p.value(&key)?;
            if params.get(&key).is_some() {
                return Err(p.error(&format!("key `{key}` appears twice")));
            }
            params.set(&key, value);
            p.skip_ws();
            match p.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(p.error("expected `,` or `}`")),
            }
        }
    }
    p.skip_ws();
    if p.pos != text.len() {
        return Err(p.error("unexpected text after the object"));
    }
    Ok(params)
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> Error {
        Error::invalid_param(format!("parameters JSON, at byte {}: {what}", self.pos))
    }
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let b = self.peek();
        if b.is_some() {
            self.pos += 1;
        }
        b
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }
    fn expect(&mut self, byte: u8) -> Result<()> {
        if self.peek() != Some(byte) {
            return Err(self.error(&format!("expected `{}`", byte as char)));
        }
        self.pos += 1;
        Ok(())
    }

    fn value(&mut self, key: &str) -> Result<ParamValue> {
        match self.peek() {
            Some(b'"') => Ok(ParamValue::Str(self.string()?)),
            Some(b't') => self.literal("true", ParamValue::Bool(true)),
            Some(b'f') => self.literal("false", ParamValue::Bool(false)),
            Some(b'-' | b'0'..=b'9') => self.number(key),
            Some(b'n') => Err(self.error(&format!("`{key}` is null; parameters are bools, numbers or strings"))),
            Some(b'[' | b'{') => {
                Err(self.error(&format!("`{key}` is an array or object; parameters are bools, numbers or strings")))
            }
            _ => Err(self.error(&format!("expected a value for `{key}`"))),
        }
    }

    fn literal(&mut self, word: &str, value: ParamValue) -> Result<ParamValue> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error(&format!("expected `{word}`")))
        }
    }

    fn number(&mut self, key: &str) -> Result<ParamValue> {
        let start = self.pos;
        while matches!(self.peek(), Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')) {
            self.pos += 1;
        }
        let token = &self.text[start..self.pos];
        if !is_json_number(token) {
            return Err(self.error(&format!("`{key}`: `{token}` is not a JSON number")));
        }
        if token.contains(['.', 'e', 'E']) {
            let v: f64 = token.parse().map_err(|_| self.error(&format!("`{key}`: bad number `{token}`")))?;
            if !v.is_finite() {
                return Err(self.error(&format!("`{key}`: `{token}` overflows a double")));
            }
            Ok(ParamValue::Float(v))
        } else {
            token
                .parse::<i64>()
                .map(ParamValue::Int)
                .map_err(|_| self.error(&format!("`{key}`: integer `{token}` does not fit in 64 bits")))
        }
    }

    fn string(&mut self) -> Result<String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            let rest = &self.text[self.pos..];
            let Some(c) = rest.chars().next() else {
                return Err(self.error("unterminated string"));
            };
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let escaped = match self.next() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => self.unicode_escape()?,
                        _ => return Err(self.error("bad escape in string")),
                    };
                    out.push(escaped);
                }
                c if (c as u32) < 0x20 => return Err(self.error("raw control character in string")),
                c => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32> {
        let digits = self.text.get(self.pos..self.pos + 4).ok_or_else(|| self.error("short \\u escape"))?;
        let v = u32::from_str_radix(digits, 16).map_err(|_| self.error("bad \\u escape"))?;
        self.pos += 4;
        Ok(v)
    }

    /// After `\u`: one code point, joining a UTF-16 surrogate pair.
    fn unicode_escape(&mut self) -> Result<char> {
        let first = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&first) {
            if !self.text[self.pos..].starts_with("\\u") {
                return Err(self.error("lone high surrogate in \\u escape"));
            }
            self.pos += 2;
            let second = self.hex4()?;
            if !(0xDC00..0xE000).contains(&second) {
                return Err(self.error("bad low surrogate in \\u escape"));
            }
            0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
        } else {
            first
        };
        char::from_u32(code).ok_or_else(|| self.error("\\u escape is not a character"))
    }
}

/// JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(token: &str) -> bool {
    let b = token.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}
