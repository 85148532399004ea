//! EC2 key pairs: CreateKeyPair (an Ed25519 pair made by the server, the
//! private key returned once), ImportKeyPair (an OpenSSH public key,
//! base64-encoded as botocore sends blobs), DescribeKeyPairs and
//! DeleteKeyPair, on the project's key pairs (`app::provisioning`).

use super::error::{Domain, Ec2Error, Ec2Result, InDomain};
use super::query::{self, Params};
use super::xml::{self, El};
use super::{project_of, Answer};
use crate::app;
use crate::auth::Caller;
use crate::error::AppError;
use crate::Ctx;
use base64::Engine;
use nubo_api::params::KeypairCreate;
use nubo_api::views::KeypairCreated;
use std::sync::Arc;

fn key_name(p: &Params) -> Ec2Result<String> {
    let name = p.required("KeyName")?;
    crate::validate::name(name).map_err(|e| Ec2Error::invalid(e.to_string()))?;
    Ok(name.to_string())
}

async fn add(ctx: &Arc<Ctx>, caller: &Caller, name: &str, public_key: Option<String>) -> Ec2Result<KeypairCreated> {
    let body = KeypairCreate { name: name.to_string(), public_key };
    match app::provisioning::create_keypair(ctx, caller, &body).await {
        Ok(created) => Ok(created),
        Err(AppError::Conflict(_)) => {
            Err(Ec2Error::bad("InvalidKeyPair.Duplicate", format!("The keypair '{name}' already exists.")))
        }
        Err(AppError::BadRequest(m)) => Err(Ec2Error::bad("InvalidKey.Format", m)),
        Err(e) => Err(Ec2Error::from_app(e, Domain::Other)),
    }
}

pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let name = key_name(p)?;
    match p.str("KeyType") {
        None | Some("ed25519") => {}
        Some(other) => {
            return Err(Ec2Error::invalid(format!(
                "KeyType '{}': Nubo generates ed25519 key pairs only (--key-type ed25519); import an RSA key with ImportKeyPair",
                other.chars().take(20).collect::<String>()
            )))
        }
    }
    let KeypairCreated { keypair, private_key } = add(ctx, caller, &name, None).await?;
    Ok(vec![
        El::text("keyName", &keypair.name),
        El::text("keyFingerprint", &keypair.fingerprint),
        El::text("keyMaterial", private_key.unwrap_or_default()),
        El::text("keyPairId", keypair.id.as_str()),
    ])
}

pub async fn import(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let name = key_name(p)?;
    let material = p.required("PublicKeyMaterial")?;
    // botocore base64-encodes blobs; a plain OpenSSH line is taken as it is.
    let text = match base64::engine::general_purpose::STANDARD.decode(material.trim()) {
        Ok(raw) => String::from_utf8(raw).map_err(|_| {
            Ec2Error::bad("InvalidKey.Format", "the public key is not text: send an OpenSSH public key line")
        })?,
        Err(_) => material.to_string(),
    };
    let keypair = add(ctx, caller, &name, Some(text.trim().to_string())).await?.keypair;
    Ok(vec![
        El::text("keyFingerprint", &keypair.fingerprint),
        El::text("keyName", &keypair.name),
        El::text("keyPairId", keypair.id.as_str()),
    ])
}

pub async fn describe(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    let names = p.list("KeyName");
    let ids = p.list("KeyPairId");
    let filters = p.filters()?;
    query::check_filters(&filters, &["key-name", "key-pair-id", "fingerprint", "key-type"], false)?;
    let rows = ctx.store.keypairs(&project).await?;
    let missing: Vec<String> = names.iter().filter(|n| !rows.iter().any(|r| &r.name == *n)).cloned().collect();
    if !missing.is_empty() {
        return Err(Ec2Error::bad(
            "InvalidKeyPair.NotFound",
            format!("The key pair '{}' does not exist", missing.join(", ")),
        ));
    }
    let missing: Vec<String> = ids.iter().filter(|i| !rows.iter().any(|r| &r.id == *i)).cloned().collect();
    if !missing.is_empty() {
        return Err(Ec2Error::bad(
            "InvalidKeyPair.NotFound",
            format!("The key pair ID '{}' does not exist", missing.join(", ")),
        ));
    }
    let with_key = p.bool("IncludePublicKey")? == Some(true);
    let items = rows
        .iter()
        .filter(|r| (names.is_empty() || names.contains(&r.name)) && (ids.is_empty() || ids.contains(&r.id)))
        .filter(|r| {
            query::matches(&filters, |f| match f {
                "key-name" => vec![r.name.clone()],
                "key-pair-id" => vec![r.id.clone()],
                "fingerprint" => vec![r.fingerprint.clone()],
                _ => vec![r.key_type.trim_start_matches("ssh-").to_string()],
            })
        })
        .map(|r| {
            El::item()
                .field("keyPairId", &r.id)
                .field("keyName", &r.name)
                .field("keyFingerprint", &r.fingerprint)
                .field("keyType", if r.key_type.contains("rsa") { "rsa" } else { "ed25519" })
                .field("createTime", xml::time(r.created_at_ms))
                .opt("publicKey", with_key.then_some(&r.public_key))
                .child(El::new("tagSet"))
        });
    Ok(vec![El::list("keySet", items)])
}

pub async fn delete(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = crate::authz::creation_project(caller).in_domain(Domain::Other)?;
    let name = match (p.str("KeyName"), p.str("KeyPairId")) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(id)) if !id.is_empty() => match ctx.store.keypairs(&project).await?.into_iter().find(|k| k.id == id) {
            Some(k) => k.name,
            None => {
                return Err(Ec2Error::bad(
                    "InvalidKeyPair.NotFound",
                    format!("The key pair ID '{}' does not exist", id.chars().take(64).collect::<String>()),
                ))
            }
        },
        _ => return Err(Ec2Error::missing("KeyName")),
    };
    // Deleting a key pair that is not there succeeds, as on EC2.
    match app::provisioning::delete_keypair(ctx, caller, &name).await {
        Ok(_) | Err(AppError::NotFound { .. }) => Ok(vec![El::text("return", "true")]),
        Err(e) => Err(Ec2Error::from_app(e, Domain::Other)),
    }
}
