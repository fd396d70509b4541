//! The `{code, msg, data}` envelope of every JSON response (notes §6).

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::codes::ErrorCode;
use super::flex;

/// `code` 0 is success; anything else is an error whose `msg` starts with
/// the error key (notes §6), and then `data` is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Envelope<T> {
    #[serde(deserialize_with = "flex::int")]
    pub code: i64,
    #[serde(default)]
    pub msg: String,
    /// The original test terminal sends `en_msg` instead of `msg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub en_msg: Option<String>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
}

fn none<T>() -> Option<T> {
    None
}

impl<T> Envelope<T> {
    pub fn ok(data: T) -> Self {
        Envelope {
            code: 0,
            msg: ErrorCode::Success.key().into(),
            en_msg: None,
            data: Some(data),
        }
    }

    pub fn error(code: ErrorCode, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Envelope {
            code: i64::from(code.code()),
            msg: if detail.is_empty() {
                code.key().to_string()
            } else {
                format!("{}: {detail}", code.key())
            },
            en_msg: None,
            data: None,
        }
    }

    pub fn with_data(mut self, data: T) -> Self {
        self.data = Some(data);
        self
    }

    pub fn is_ok(&self) -> bool {
        self.code == 0
    }

    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_i64(self.code)
    }
}

impl Envelope<serde_json::Value> {
    pub fn success() -> Self {
        Envelope {
            code: 0,
            msg: ErrorCode::Success.key().into(),
            en_msg: None,
            data: None,
        }
    }

    /// Re-reads `data` as a typed body.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        match &self.data {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => T::deserialize(v).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn reads_both_msg_styles_and_missing_data() {
        let e: Envelope<Value> =
            serde_json::from_str(r#"{"code":0,"en_msg":"Success","data":{"a":1}}"#).expect("ok");
        assert!(e.is_ok());
        let e: Envelope<Value> =
            serde_json::from_str(r#"{"code":"60000","msg":"TerminalTokenError"}"#).expect("ok");
        assert_eq!(e.error_code(), Some(ErrorCode::TerminalTokenError));
        assert!(e.data.is_none());
    }

    #[test]
    fn error_text_has_key() {
        let e = Envelope::<Value>::error(
            ErrorCode::TerminalMaskError,
            "255.0.255.0 is not contiguous",
        );
        let s = serde_json::to_string(&e).expect("ok");
        assert_eq!(
            s,
            r#"{"code":60006,"msg":"TerminalMaskError: 255.0.255.0 is not contiguous"}"#
        );
    }
}
