//! What a streaming client reads on its error channel when a session ends.

use serde::Serialize;

use super::Outcome;

/// `metav1.Status` as `json.Marshal` writes it (reference §3.10): field order and omitted
/// empty fields included.
#[derive(Serialize)]
struct Status {
    metadata: ListMeta,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

/// Always `{}` in a status.
#[derive(Serialize)]
struct ListMeta {}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

/// `StatusCause`; its `Type` is serialized as `reason`.
#[derive(Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
}

impl Status {
    fn of(cmd: &[String], outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Exited(0) | Outcome::Done => Self {
                metadata: ListMeta {},
                status: "Success",
                message: None,
                reason: None,
                details: None,
                code: None,
            },
            Outcome::Exited(code) => Self {
                metadata: ListMeta {},
                status: "Failure",
                message: Some(format!(
                    "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                    cmd.join(" ")
                )),
                reason: Some("NonZeroExitCode"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: Some("ExitCode"),
                        message: code.to_string(),
                    }],
                }),
                code: None,
            },
            Outcome::Failed(err) => Self {
                metadata: ListMeta {},
                status: "Failure",
                message: Some(format!("Internal error occurred: {err}")),
                reason: Some("InternalError"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: None,
                        message: err.clone(),
                    }],
                }),
                code: Some(500),
            },
        }
    }
}

/// What goes on the error channel: v4/v5 (`json`) always the JSON status (reference §3.10);
/// older protocols the status message, only on failure.
pub fn payload(json: bool, cmd: &[String], outcome: &Outcome) -> Option<String> {
    let status = Status::of(cmd, outcome);
    if json {
        match serde_json::to_string(&status) {
            Ok(json) => Some(json),
            Err(err) => {
                tracing::warn!(error = %err, "cannot encode a streaming status");
                None
            }
        }
    } else {
        status.message
    }
}
