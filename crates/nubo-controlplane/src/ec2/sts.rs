//! STS's GetCallerIdentity on the EC2 endpoint: tools that ask "who am
//! I" before anything else (Ansible's amazon.aws, Terraform's AWS
//! provider, scripts) sign a request for service `sts` to the same URL.
//! The answer names the access key's user and, as the account, the
//! project: the `ownerId` the EC2 answers carry. STS speaks the plain
//! Query protocol, whose documents differ from EC2's (a `...Result`
//! element, `ErrorResponse` for errors), so they are written here.

use super::error::{Ec2Error, Ec2Result};
use super::xml::escape_into;
use crate::auth::Caller;
use std::fmt::Write;

/// The SigV4 service name STS requests are signed for.
pub const SERVICE: &str = "sts";
/// The only STS API version served.
pub const API_VERSION: &str = "2011-06-15";
const NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// One STS action: its answer document, or the error to send.
pub fn answer(caller: &Caller, action: &str, version: Option<&str>, request_id: &str) -> Ec2Result<String> {
    if let Some(v) = version.filter(|v| *v != API_VERSION) {
        return Err(Ec2Error::bad(
            "InvalidParameterValue",
            format!(
                "STS API version '{}' is not served; use Version={API_VERSION}",
                v.chars().take(20).collect::<String>()
            ),
        ));
    }
    match action {
        "GetCallerIdentity" => Ok(caller_identity(caller, request_id)),
        "" => Err(Ec2Error::missing("Action")),
        other => Err(Ec2Error::bad(
            "InvalidAction",
            format!(
                "The action {} is not valid for this web service; Nubo's STS serves GetCallerIdentity only",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

fn caller_identity(caller: &Caller, request_id: &str) -> String {
    // An operator's key outside any project has no account: AWS's own
    // root-like answer would be misleading, so the account is empty.
    let account = caller.project_id.as_deref().unwrap_or("");
    let arn = format!("arn:aws:iam::{account}:user/{}", caller.user_name);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = write!(out, "<GetCallerIdentityResponse xmlns=\"{NAMESPACE}\"><GetCallerIdentityResult><Arn>");
    escape_into(&arn, &mut out);
    out.push_str("</Arn><UserId>");
    escape_into(&caller.user_id, &mut out);
    out.push_str("</UserId><Account>");
    escape_into(account, &mut out);
    let _ = write!(
        out,
        "</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></GetCallerIdentityResponse>"
    );
    out
}

/// The error document of the Query protocol.
pub fn error(e: &Ec2Error, request_id: &str) -> String {
    let kind = if e.status.is_server_error() { "Receiver" } else { "Sender" };
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = write!(out, "<ErrorResponse xmlns=\"{NAMESPACE}\"><Error><Type>{kind}</Type><Code>");
    escape_into(&e.code, &mut out);
    out.push_str("</Code><Message>");
    escape_into(&e.message, &mut out);
    let _ = write!(out, "</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn alice() -> Caller {
        Caller {
            user_id: "u-0123456789abcdef0".into(),
            user_name: "alice<&>".into(),
            admin: false,
            project_id: Some("p-0123456789abcdef0".into()),
            project_name: Some("team-a".into()),
            role: Role::Member,
        }
    }

    #[test]
    fn the_caller_is_the_keys_user_and_the_account_its_project() {
        let doc = answer(&alice(), "GetCallerIdentity", Some(API_VERSION), "req-1").unwrap();
        assert!(doc.contains("<Arn>arn:aws:iam::p-0123456789abcdef0:user/alice&lt;&amp;&gt;</Arn>"), "{doc}");
        assert!(doc.contains("<UserId>u-0123456789abcdef0</UserId>"), "{doc}");
        assert!(doc.contains("<Account>p-0123456789abcdef0</Account>"), "{doc}");
        assert!(doc.contains("<RequestId>req-1</RequestId>"), "{doc}");
        assert!(answer(&alice(), "GetCallerIdentity", None, "r").is_ok());
    }

    #[test]
    fn other_actions_and_versions_are_refused_in_the_query_protocols_form() {
        let e = answer(&alice(), "AssumeRole", None, "r").unwrap_err();
        assert_eq!(e.code, "InvalidAction");
        let e = answer(&alice(), "GetCallerIdentity", Some("2099-01-01"), "r").unwrap_err();
        assert_eq!(e.code, "InvalidParameterValue");
        let doc = error(&e, "req-2");
        assert!(doc.contains("<ErrorResponse") && doc.contains("<Type>Sender</Type>"), "{doc}");
        assert!(doc.contains("<Code>InvalidParameterValue</Code>") && doc.contains("<RequestId>req-2</RequestId>"));
    }
}
