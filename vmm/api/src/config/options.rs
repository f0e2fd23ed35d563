//! The `key=value,key=value` option strings of Cloud Hypervisor's command line
//! (`--memory size=1G,shared=on`), parsed once here so every flag reports mistakes
//! the same way and names the flag, the key and what would have been accepted.

use std::path::PathBuf;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("{flag}: unknown option '{key}'; valid options: {}", valid.join(", "))]
    UnknownKey {
        flag: &'static str,
        key: String,
        valid: &'static [&'static str],
    },
    #[error("{flag}: option '{key}' needs a value ({key}=...)")]
    MissingValue { flag: &'static str, key: String },
    #[error("{flag}: option '{key}' is given more than once")]
    Duplicate { flag: &'static str, key: String },
    #[error("{flag}: option '{key}' is required ({key}=...)")]
    Required {
        flag: &'static str,
        key: &'static str,
    },
    #[error("{flag} {key}={value}: {expected}")]
    InvalidValue {
        flag: &'static str,
        key: &'static str,
        value: String,
        expected: String,
    },
    #[error("{flag}: empty option string; valid options: {}", valid.join(", "))]
    Empty {
        flag: &'static str,
        valid: &'static [&'static str],
    },
}

/// One flag's option string, split into pairs and checked against the keys that
/// flag knows. Values are converted on demand by [`Options::get`].
#[derive(Debug)]
pub struct Options<'a> {
    flag: &'static str,
    pairs: Vec<(&'static str, &'a str)>,
}

impl<'a> Options<'a> {
    /// Splits `input` on commas into `key=value` pairs. Every key must be one of
    /// `valid`; a key may appear once. A value in brackets is a list and keeps its
    /// commas (`cpus=[0-3,8]`), as in Cloud Hypervisor's `--numa`.
    pub fn parse(
        flag: &'static str,
        input: &'a str,
        valid: &'static [&'static str],
    ) -> Result<Options<'a>, OptionError> {
        if input.trim().is_empty() {
            return Err(OptionError::Empty { flag, valid });
        }
        let mut pairs: Vec<(&'static str, &'a str)> = Vec::new();
        for item in split_outside_brackets(input) {
            let (key, value) = match item.split_once('=') {
                Some((key, value)) => (key.trim(), value),
                None => {
                    let key = item.trim();
                    return Err(if valid.contains(&key) {
                        OptionError::MissingValue {
                            flag,
                            key: key.to_string(),
                        }
                    } else {
                        OptionError::UnknownKey {
                            flag,
                            key: key.to_string(),
                            valid,
                        }
                    });
                }
            };
            let Some(known) = valid.iter().copied().find(|k| *k == key) else {
                return Err(OptionError::UnknownKey {
                    flag,
                    key: key.to_string(),
                    valid,
                });
            };
            if value.is_empty() {
                return Err(OptionError::MissingValue {
                    flag,
                    key: known.to_string(),
                });
            }
            if pairs.iter().any(|(k, _)| *k == known) {
                return Err(OptionError::Duplicate {
                    flag,
                    key: known.to_string(),
                });
            }
            pairs.push((known, value));
        }
        Ok(Options { flag, pairs })
    }

    /// The raw text given for `key`, if any.
    pub fn raw(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// The value of `key` converted to `T`, or `None` when the key was not given.
    pub fn get<T: OptionValue>(&self, key: &'static str) -> Result<Option<T>, OptionError> {
        let Some(raw) = self.raw(key) else {
            return Ok(None);
        };
        T::from_option(raw)
            .map(Some)
            .map_err(|expected| OptionError::InvalidValue {
                flag: self.flag,
                key,
                value: raw.to_string(),
                expected,
            })
    }

    /// Like [`Options::get`] for a key that must be present.
    pub fn require<T: OptionValue>(&self, key: &'static str) -> Result<T, OptionError> {
        self.get(key)?.ok_or(OptionError::Required {
            flag: self.flag,
            key,
        })
    }
}

/// `input` split on the commas that are not inside `[...]`.
fn split_outside_brackets(input: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (at, c) in input.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&input[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&input[start..]);
    items
}

/// The items of a list value: `[a,b]` or, for one item, `a` alone.
pub fn list_items(raw: &str) -> Vec<&str> {
    let inner = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(raw);
    if inner.is_empty() {
        return Vec::new();
    }
    inner.split(',').map(str::trim).collect()
}

/// A type an option value can be converted to. The error is a phrase saying what
/// was expected, completed by [`OptionError::InvalidValue`].
pub trait OptionValue: Sized {
    fn from_option(raw: &str) -> Result<Self, String>;
}

/// `on`/`off` switches; `true`/`false` are accepted too since the JSON API uses them.
impl OptionValue for bool {
    fn from_option(raw: &str) -> Result<bool, String> {
        match raw {
            "on" | "true" => Ok(true),
            "off" | "false" => Ok(false),
            _ => Err("expected on or off".to_string()),
        }
    }
}

impl OptionValue for PathBuf {
    fn from_option(raw: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from(raw))
    }
}

impl OptionValue for String {
    fn from_option(raw: &str) -> Result<String, String> {
        Ok(raw.to_string())
    }
}

/// Plain decimal numbers, bounded by the field they fill.
macro_rules! unsigned_option_value {
    ($($ty:ty),*) => {$(
        impl OptionValue for $ty {
            fn from_option(raw: &str) -> Result<$ty, String> {
                raw.parse::<$ty>()
                    .map_err(|_| format!("expected a whole number from 0 to {}", <$ty>::MAX))
            }
        }
    )*};
}

unsigned_option_value!(u8, u16, u32);

/// A byte count written as a number with an optional binary suffix: `K`, `M`, `G`
/// or `T` (powers of 1024, as Cloud Hypervisor reads them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl OptionValue for ByteSize {
    fn from_option(raw: &str) -> Result<ByteSize, String> {
        const EXPECTED: &str = "expected a size such as 512M or 2G (suffixes K, M, G, T)";
        let (digits, shift) = match raw.char_indices().last() {
            Some((at, 'K' | 'k')) => (&raw[..at], 10),
            Some((at, 'M' | 'm')) => (&raw[..at], 20),
            Some((at, 'G' | 'g')) => (&raw[..at], 30),
            Some((at, 'T' | 't')) => (&raw[..at], 40),
            _ => (raw, 0),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EXPECTED.to_string());
        }
        let number: u64 = digits.parse().map_err(|_| EXPECTED.to_string())?;
        number
            .checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("{raw} does not fit in 64 bits of bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMORY_KEYS: &[&str] = &["size", "shared", "hugepages"];

    #[test]
    fn splits_pairs_and_converts_values() {
        let opts = Options::parse("--memory", "size=1G,shared=on", MEMORY_KEYS).unwrap();
        assert_eq!(
            opts.get::<ByteSize>("size").unwrap(),
            Some(ByteSize(1 << 30))
        );
        assert_eq!(opts.get::<bool>("shared").unwrap(), Some(true));
        assert_eq!(opts.get::<bool>("hugepages").unwrap(), None);
    }

    #[test]
    fn unknown_key_lists_the_valid_ones() {
        let err = Options::parse("--memory", "sizee=1G", MEMORY_KEYS).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--memory: unknown option 'sizee'; valid options: size, shared, hugepages"
        );
    }

    #[test]
    fn key_without_value_is_rejected() {
        let err = Options::parse("--memory", "size", MEMORY_KEYS).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--memory: option 'size' needs a value (size=...)"
        );
        let err = Options::parse("--memory", "size=", MEMORY_KEYS).unwrap_err();
        assert!(matches!(err, OptionError::MissingValue { .. }));
    }

    #[test]
    fn repeated_key_is_rejected() {
        let err = Options::parse("--memory", "size=1G,size=2G", MEMORY_KEYS).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--memory: option 'size' is given more than once"
        );
    }

    #[test]
    fn empty_string_is_rejected() {
        let err = Options::parse("--memory", "", MEMORY_KEYS).unwrap_err();
        assert!(err.to_string().starts_with("--memory: empty option string"));
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let opts = Options::parse("--memory", "size=lots,shared=yes", MEMORY_KEYS).unwrap();
        assert_eq!(
            opts.get::<ByteSize>("size").unwrap_err().to_string(),
            "--memory size=lots: expected a size such as 512M or 2G (suffixes K, M, G, T)"
        );
        assert_eq!(
            opts.get::<bool>("shared").unwrap_err().to_string(),
            "--memory shared=yes: expected on or off"
        );
        let opts = Options::parse("--cpus", "boot=300", &["boot"]).unwrap();
        assert_eq!(
            opts.get::<u8>("boot").unwrap_err().to_string(),
            "--cpus boot=300: expected a whole number from 0 to 255"
        );
    }

    #[test]
    fn required_key_must_be_present() {
        let opts = Options::parse("--device", "id=gpu0", &["path", "id"]).unwrap();
        assert_eq!(
            opts.require::<PathBuf>("path").unwrap_err().to_string(),
            "--device: option 'path' is required (path=...)"
        );
    }

    #[test]
    fn bracketed_values_keep_their_commas() {
        let opts = Options::parse(
            "--numa",
            "guest_numa_id=0,cpus=[0-3,8],distances=[1@20,2@30]",
            &["guest_numa_id", "cpus", "distances"],
        )
        .unwrap();
        assert_eq!(opts.raw("cpus"), Some("[0-3,8]"));
        assert_eq!(list_items(opts.raw("cpus").unwrap()), vec!["0-3", "8"]);
        assert_eq!(list_items("1@20"), vec!["1@20"]);
        assert_eq!(list_items("[]"), Vec::<&str>::new());
        let err = Options::parse("--numa", "cpus=[0,1],x=[2]", &["cpus"]).unwrap_err();
        assert!(
            matches!(err, OptionError::UnknownKey { ref key, .. } if key == "x"),
            "{err}"
        );
    }

    #[test]
    fn sizes_accept_binary_suffixes() {
        let size = |s: &str| ByteSize::from_option(s).map(|b| b.0);
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("64K"), Ok(64 << 10));
        assert_eq!(size("512M"), Ok(512 << 20));
        assert_eq!(size("2g"), Ok(2 << 30));
        assert_eq!(size("1T"), Ok(1 << 40));
        assert!(size("M").is_err());
        assert!(size("-1M").is_err());
        assert!(size("1.5G").is_err());
        assert!(size("99999999999T").unwrap_err().contains("64 bits"));
    }
}
