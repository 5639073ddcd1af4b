//! Closed sets that travel as fixed strings (failure kinds, dead-letter reasons, outcomes,
//! header and field names): each variant is written once with its wire spelling, and its
//! conversions both ways are made from that one list.

/// An enum whose variants each stand for one wire string: `as_str`, `from_wire`, `Display`, and
/// comparison with `&str` (so `kind == "timeout"` reads as the wire does).
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $wire:literal, )*
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$variant_meta])* $variant, )*
        }

        impl $name {
            /// The wire spelling.
            $vis fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $wire, )*
                }
            }

            /// The variant spelled `text` on the wire, if there is one.
            #[allow(dead_code, reason = "some sets are only written, never read back")]
            pub(crate) fn from_wire(text: &str) -> Option<Self> {
                match text {
                    $( $wire => Some($name::$variant), )*
                    _ => None,
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

/// Serde for a [`wire_enum!`] as its string; a string this version does not know reads as
/// `$unknown` (a newer version wrote it), so that one new word never makes a record unreadable.
macro_rules! wire_serde {
    ($name:ident, $unknown:ident) => {
        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> Result<Self, D::Error> {
                let text = <::std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Ok($name::from_wire(&text).unwrap_or($name::$unknown))
            }
        }
    };
}

pub(crate) use {wire_enum, wire_serde};
