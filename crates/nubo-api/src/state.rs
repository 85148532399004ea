//! Lifecycle states as enums: what each resource can be in, spelled once.
//! `state_enum!` gives a state its wire and database spelling (lowercase
//! words, as the API has always shown them), `as_str`, `FromStr` with an
//! error that lists the known states, `Display`, serde, an OpenAPI schema,
//! and, with the `sqlx` feature (the control plane's), the traits that let
//! a row's TEXT column be read and written as the enum through sqlx's `Any`
//! driver. A state read from the database that the code does not know is
//! then a decode error naming the column's value, never a silent default.

/// A state spelled in the database or on the wire that is not one of the
/// known states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not a {kind} state; expected one of: {known}")]
pub struct UnknownState {
    pub kind: &'static str,
    pub value: String,
    pub known: String,
}

/// Declares a state enum: `state_enum! { /// doc \n pub enum Name("kind") { Variant = "spelling", ... } }`.
/// Each spelling is taken as a plain token (`tt`), not a `literal`
/// fragment: utoipa's derive does not see a `serde(rename)` whose value
/// comes wrapped as a fragment, and would document `Running` for `running`.
#[macro_export]
macro_rules! state_enum {
    (
        $(#[doc = $doc:literal])*
        pub enum $name:ident($kind:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:tt ),+ $(,)?
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
                 serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+
        }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The spelling on the wire and in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The state spelled `s`, if it is one.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::state::UnknownState;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s).ok_or_else(|| $crate::state::UnknownState {
                    kind: $kind,
                    value: s.chars().take(40).collect(),
                    known: [$($text),+].join(", "),
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        // Unit tests may compare a state with its spelling; the code
        // itself cannot (outside tests this impl does not exist), so a
        // state is never compared as a string by mistake.
        #[cfg(test)]
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        $crate::__state_enum_sqlx!($name);
    };
}

/// The sqlx side of `state_enum!`: stored as TEXT through the `Any` driver.
#[cfg(feature = "sqlx")]
#[doc(hidden)]
#[macro_export]
macro_rules! __state_enum_sqlx {
    ($name:ident) => {
        impl sqlx::Type<sqlx::Any> for $name {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <&str as sqlx::Type<sqlx::Any>>::type_info()
            }
            fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Any>>::compatible(ty)
            }
        }
        impl<'r> sqlx::Decode<'r, sqlx::Any> for $name {
            fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
                Ok(text.parse::<$name>()?)
            }
        }
        impl<'q> sqlx::Encode<'q, sqlx::Any> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Any>>::encode(self.as_str(), buf)
            }
        }
    };
}

#[cfg(not(feature = "sqlx"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __state_enum_sqlx {
    ($name:ident) => {};
}

#[cfg(test)]
mod tests {
    crate::state_enum! {
        /// A test state.
        pub enum Light("light") { Red = "red", Green = "green" }
    }

    #[test]
    fn spellings_round_trip_and_unknown_ones_are_named() {
        for l in Light::ALL {
            assert_eq!(l.as_str().parse::<Light>(), Ok(*l));
            assert_eq!(serde_json::to_value(l).unwrap_or_default(), serde_json::json!(l.as_str()));
        }
        let err = "blue".parse::<Light>().err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err, "'blue' is not a light state; expected one of: red, green");
        let schema = serde_json::to_value(<Light as utoipa::PartialSchema>::schema()).unwrap_or_default();
        assert_eq!(schema["enum"], serde_json::json!(["red", "green"]), "{schema}");
        assert_eq!(schema["description"], "A test state.");
    }
}
