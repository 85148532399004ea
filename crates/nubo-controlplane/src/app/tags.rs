//! Tags of any resource that carries them, as the native API and the EC2
//! API both see them: which ids carry tags and where their tags are kept
//! (a network's are its VPC's), who may read and change them (the
//! resource's own access check: another project's resource is not
//! found, a viewer may only read), the limits EC2 sets (50 per resource,
//! keys of 1-128 characters not starting with `aws:`, values of at most
//! 256), the tag list with its pages, and the `tag:KEY=VALUE` filters of
//! the native lists. The tags themselves are rows of the store's `tags`
//! table (`crate::tags`).

use crate::auth::Caller;
use crate::authz::{self, Access};
use crate::error::{AppError, AppResult};
use crate::pagination::{Cursor, PageRequest, MAX_PAGE};
use crate::tags::{TagError, TagRow, MAX_TAGS_PER_RESOURCE};
use crate::{validate, Ctx};
use base64::Engine;
use nubo_api::views::{
    FloatingIp, Image, Instance, Keypair, Network, ResourceTags, SecurityGroup, Snapshot, Tag, Volume,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A resource whose tags may be read or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The id its tags are kept under (a network's: its `vpc-` id).
    pub id: String,
    /// `instance`, `volume`, `snapshot`, `image`, `security-group`, `vpc`,
    /// `subnet`, `floating-ip` or `key-pair`.
    pub kind: &'static str,
    /// The resource's project (empty for a builtin image, which has none).
    pub project: String,
}

/// What a user is told when an id names nothing that carries tags.
fn not_taggable(id: &str) -> AppError {
    AppError::BadRequest(format!(
        "'{}' is not the id of a resource that carries tags: tags go on instances (i-...), volumes (vol-...), \
         snapshots (snap-...), images (ami-...), security groups (sg-...), networks (net-..., or vpc-.../subnet-... \
         as the EC2 API names them), floating IPs (fip-...) and key pairs (key-...)",
        id.chars().take(64).collect::<String>()
    ))
}

/// The type of resource `id` names and the id its tags are kept under;
/// `None` when it carries no tags. The EC2 API's ids keep their own
/// types (`crate::tags::resource_type_of`); a network (`net-`) is its VPC,
/// so the native API and the EC2 API see the same tags on it.
pub fn kind_of(id: &str) -> Option<(String, &'static str)> {
    if let Some(kind) = crate::tags::resource_type_of(id) {
        return Some((id.to_string(), kind));
    }
    if id.starts_with(nubo_api::ids::NetworkId::PREFIX) {
        return Some((crate::networks::ec2_ids(id).0, "vpc"));
    }
    if id.starts_with(nubo_api::ids::FloatingIpId::PREFIX) {
        return Some((id.to_string(), "floating-ip"));
    }
    if id.starts_with(nubo_api::ids::KeypairId::PREFIX) {
        return Some((id.to_string(), "key-pair"));
    }
    None
}

/// The resource `id` names, loaded through its own access check: another
/// project's is not found, and `Access::Write` needs a role that may
/// change it. Builtin images carry no tags.
pub async fn target(ctx: &Ctx, caller: &Caller, id: &str, access: Access) -> AppResult<Target> {
    let (stored, kind) = kind_of(id).ok_or_else(|| not_taggable(id))?;
    let (stored, project) = match kind {
        "instance" => {
            let row = crate::app::instances::load(ctx, caller, id, access).await?;
            (row.id, row.project_id.unwrap_or_default())
        }
        "volume" => {
            let row = crate::app::volumes::load(ctx, caller, id, access).await?;
            (row.id, row.project_id)
        }
        "snapshot" => {
            let row = crate::app::volumes::load_snapshot(ctx, caller, id, access).await?;
            (row.id, row.project_id)
        }
        "image" => {
            // Every project may read a public image; tagging one needs its
            // own project's write role.
            let img = crate::app::images::load(ctx, caller, id, Access::Read).await?;
            // A name that looks like an id is not the image's id.
            if img.id != id {
                return Err(AppError::NotFound { kind: "image", id: id.chars().take(64).collect() });
            }
            let project = match (img.project_id, access) {
                (Some(p), _) => p,
                (None, Access::Read) => String::new(),
                (None, _) => {
                    return Err(AppError::Forbidden(format!(
                        "image {id} is builtin: only a project's own images can be tagged"
                    )))
                }
            };
            if access != Access::Read {
                authz::check(caller, access, Some(&project), "image", id)?;
            }
            (img.id, project)
        }
        "vpc" | "subnet" => {
            let prefix = if kind == "vpc" { "vpc" } else { "subnet" };
            let net = if id.starts_with(nubo_api::ids::NetworkId::PREFIX) {
                id.to_string()
            } else {
                crate::networks::network_of_ec2_id(prefix, id).ok_or_else(|| {
                    AppError::BadRequest(format!(
                        "'{}' is not a valid {prefix} id: expected '{prefix}-' followed by 17 hex digits",
                        id.chars().take(64).collect::<String>()
                    ))
                })?
            };
            let not_found =
                || AppError::NotFound { kind: if kind == "vpc" { "network" } else { "subnet" }, id: id.into() };
            let row = crate::app::networks::load_network(ctx, caller, &net, access).await.map_err(|e| match e {
                AppError::NotFound { .. } => not_found(),
                other => other,
            })?;
            if row.id != net || (kind == "subnet" && row.has_subnet == 0) {
                return Err(not_found());
            }
            (stored, row.project_id)
        }
        "security-group" => {
            let row = crate::app::networks::load_group(ctx, caller, id, access).await?;
            // A name that looks like an id is not the group's id.
            if row.id != id {
                return Err(AppError::NotFound { kind: "security group", id: id.chars().take(64).collect() });
            }
            (row.id, row.project_id)
        }
        "key-pair" => {
            // Key pairs are the caller's project's, by name; their ids
            // are looked up among them.
            let not_found = || AppError::NotFound { kind: "key pair", id: id.chars().take(64).collect() };
            let project = authz::caller_project(caller).map_err(|_| not_found())?;
            let row = ctx.store.keypairs(&project).await?.into_iter().find(|k| k.id == id).ok_or_else(not_found)?;
            authz::check(caller, access, Some(&row.project_id), "key pair", id)?;
            (row.id, row.project_id)
        }
        _ => {
            let row = crate::app::floating_ips::load(ctx, caller, id, access).await?;
            if row.id != id {
                return Err(AppError::NotFound { kind: "floating IP", id: id.chars().take(64).collect() });
            }
            (row.id, row.project_id)
        }
    };
    Ok(Target { id: stored, kind, project })
}

/// Checks tags as EC2 allows them (`validate::tag`), and that there are
/// not more than one resource may carry.
pub fn check(tags: &BTreeMap<String, String>) -> AppResult<()> {
    if tags.is_empty() {
        return Err(AppError::BadRequest("no tags given: name at least one, as KEY=VALUE".into()));
    }
    if tags.len() as i64 > MAX_TAGS_PER_RESOURCE {
        return Err(AppError::BadRequest(format!(
            "{} tags given; a resource carries at most {MAX_TAGS_PER_RESOURCE}: set fewer",
            tags.len()
        )));
    }
    for (k, v) in tags {
        validate::tag(k, v)?;
    }
    Ok(())
}

/// The tags of a target as the caller sees them: a project sees only
/// its own tags (not those another project put on its public image or
/// external network).
async fn tags_of(ctx: &Ctx, caller: &Caller, t: &Target) -> AppResult<ResourceTags> {
    let tags = match authz::list_scope(caller) {
        Some(None) => ctx.store.tags_of(&t.id).await?,
        Some(Some(p)) if p == t.project => ctx.store.tags_of(&t.id).await?,
        _ => BTreeMap::new(),
    };
    Ok(ResourceTags { resource_id: t.id.clone(), resource_type: t.kind.to_string(), tags })
}

/// Adds or overwrites tags on a resource (its other tags stay), all or
/// none; returns all its tags after.
pub async fn set(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    id: &str,
    tags: &BTreeMap<String, String>,
) -> AppResult<ResourceTags> {
    check(tags)?;
    let t = target(ctx, caller, id, Access::Write).await?;
    let pairs: Vec<(String, String)> = tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    ctx.store.set_tags(&[(t.id.clone(), t.kind, t.project.clone())], &pairs).await.map_err(|e| match e {
        TagError::TooMany { resource, count } => AppError::BadRequest(format!(
            "{resource} would carry {count} tags; at most {MAX_TAGS_PER_RESOURCE} are allowed: \
             remove some first (`nubo tag unset {resource} KEY...`)"
        )),
        TagError::Db(e) => e.into(),
    })?;
    tags_of(ctx, caller, &t).await
}

/// Removes tags by key from a resource (keys it does not carry are no
/// error); returns the tags it still carries.
pub async fn unset(ctx: &Arc<Ctx>, caller: &Caller, id: &str, keys: &[String]) -> AppResult<ResourceTags> {
    if keys.is_empty() {
        return Err(AppError::BadRequest("no tag keys given: name the keys to remove (`?key=KEY`, repeated)".into()));
    }
    let t = target(ctx, caller, id, Access::Write).await?;
    let keys: Vec<(String, Option<String>)> = keys.iter().map(|k| (k.clone(), None)).collect();
    ctx.store.delete_tags(std::slice::from_ref(&t.id), &keys).await?;
    tags_of(ctx, caller, &t).await
}

/// One resource's tags.
pub async fn show(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<ResourceTags> {
    let t = target(ctx, caller, id, Access::Read).await?;
    tags_of(ctx, caller, &t).await
}

/// Where a page of the tag list ends: its last tag's resource and key.
/// Tags have no creation time, so their pages have tokens of their own
/// (the same `limit`/`page_token` protocol as every other list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagPage {
    pub limit: Option<u32>,
    pub after: Option<(String, String)>,
}

const TOKEN_VERSION: &str = "t1";

fn token_of(t: &Tag) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{TOKEN_VERSION}:{}:{}", t.resource_id, t.key))
}

impl TagPage {
    /// The page asked for (`limit` as sent, 1 to 1000, and the previous
    /// answer's token); a bad one is refused saying what is allowed.
    pub fn parse(limit: Option<&str>, token: Option<&str>) -> AppResult<Self> {
        let bad_token = || {
            AppError::BadRequest(
                "the page token is not valid: pass the token of the previous answer unchanged, \
                 or leave it out to start from the first page"
                    .into(),
            )
        };
        let after = match token {
            None | Some("") => None,
            Some(t) => {
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t).map_err(|_| bad_token())?;
                let text = String::from_utf8(raw).map_err(|_| bad_token())?;
                let mut parts = text.splitn(3, ':');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(TOKEN_VERSION), Some(r), Some(k)) if kind_of(r).is_some() => {
                        Some((r.to_string(), k.to_string()))
                    }
                    _ => return Err(bad_token()),
                }
            }
        };
        let limit = match limit {
            None => None,
            Some(l) => Some(l.trim().parse::<i64>().map_err(|_| {
                AppError::BadRequest(format!(
                    "limit '{}' is not a number: ask for 1 to {MAX_PAGE} items per page",
                    l.chars().take(40).collect::<String>()
                ))
            })?),
        };
        // The same range and message as every list; a token alone
        // continues with the largest pages.
        let checked = PageRequest::parse("limit", limit, None, 1..=MAX_PAGE)?;
        let limit = checked.limit.or(after.as_ref().map(|_| MAX_PAGE));
        Ok(Self { limit, after })
    }
}

/// The tags the caller may see, ordered by resource and key: of one
/// resource (`resource`), with one of `keys` (when any are given); a page
/// of them and the next page's token.
pub async fn list(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    resource: Option<&str>,
    keys: &[String],
    page: &TagPage,
) -> AppResult<(Vec<Tag>, Option<String>)> {
    let Some(scope) = authz::list_scope(caller) else { return Ok((Vec::new(), None)) };
    let resource = match resource {
        Some(r) => Some(target(ctx, caller, r, Access::Read).await?.id),
        None => None,
    };
    let mut rows: Vec<TagRow> = ctx
        .store
        .tags(scope.as_deref())
        .await?
        .into_iter()
        .filter(|t| resource.as_ref().is_none_or(|r| *r == t.resource_id))
        .filter(|t| keys.is_empty() || keys.contains(&t.key))
        .filter(|t| page.after.as_ref().is_none_or(|(r, k)| (&t.resource_id, &t.key) > (r, k)))
        .collect();
    // The store orders by the same pair; ordered here too, so that pages
    // hold whatever the database's collation.
    rows.sort_by(|a, b| (&a.resource_id, &a.key).cmp(&(&b.resource_id, &b.key)));
    let mut tags: Vec<Tag> = rows
        .into_iter()
        .map(|t| Tag { resource_id: t.resource_id, resource_type: t.resource_type, key: t.key, value: t.value })
        .collect();
    let next = match page.limit {
        Some(l) if tags.len() > l as usize => {
            tags.truncate(l as usize);
            tags.last().map(token_of)
        }
        _ => None,
    };
    Ok((tags, next))
}

/// `tag:KEY=VALUE` filters of a native list: each is a key with a value
/// (that exact value) or without (any value); a resource must match all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagFilter(Vec<(String, Option<String>)>);

impl TagFilter {
    /// Reads filters written `KEY=VALUE` or `KEY`.
    pub fn parse(specs: &[String]) -> AppResult<Self> {
        let mut out = Vec::new();
        for s in specs {
            let (k, v) = match s.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (s.as_str(), None),
            };
            if k.is_empty() {
                return Err(AppError::BadRequest(format!(
                    "tag filter '{}' has no key: write KEY=VALUE, or KEY for any value",
                    s.chars().take(80).collect::<String>()
                )));
            }
            out.push((k.to_string(), v));
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether tags match every filter.
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| tags.get(k).is_some_and(|have| v.as_ref().is_none_or(|want| want == have)))
    }
}

/// A view that carries its resource's tags.
pub trait Tagged {
    /// The id its tags are kept under.
    fn tag_id(&self) -> String;
    fn tags_mut(&mut self) -> &mut BTreeMap<String, String>;
}

macro_rules! tagged {
    ($($view:ty),+) => {
        $(impl Tagged for $view {
            fn tag_id(&self) -> String {
                self.id.to_string()
            }
            fn tags_mut(&mut self) -> &mut BTreeMap<String, String> {
                &mut self.tags
            }
        })+
    };
}

tagged!(Instance, Volume, Snapshot, Image, SecurityGroup, FloatingIp, Keypair);

impl Tagged for Network {
    fn tag_id(&self) -> String {
        crate::networks::ec2_ids(self.id.as_str()).0
    }
    fn tags_mut(&mut self) -> &mut BTreeMap<String, String> {
        &mut self.tags
    }
}

/// Puts their tags on views (one read of the caller's project's tags):
/// a project sees its own tags only, an operator every project's.
pub async fn fill<T: Tagged>(ctx: &Ctx, caller: &Caller, items: &mut [T]) -> AppResult<()> {
    let Some(scope) = authz::list_scope(caller) else { return Ok(()) };
    let mut tags = ctx.store.tags_by_resource(scope.as_deref()).await?;
    for item in items {
        *item.tags_mut() = tags.remove(&item.tag_id()).unwrap_or_default();
    }
    Ok(())
}

/// One view with its tags (see [`fill`]).
pub async fn fill_one<T: Tagged>(ctx: &Ctx, caller: &Caller, mut item: T) -> AppResult<T> {
    fill(ctx, caller, std::slice::from_mut(&mut item)).await?;
    Ok(item)
}

/// The views of a list with their tags, and only those that match `filter`.
pub async fn select<T: Tagged>(ctx: &Ctx, caller: &Caller, mut items: Vec<T>, filter: &TagFilter) -> AppResult<Vec<T>> {
    fill(ctx, caller, &mut items).await?;
    items.retain_mut(|i| filter.matches(i.tags_mut()));
    Ok(items)
}

/// The instances the caller may see whose tags match `filter` (instance
/// views carry their tags already), a page of them and the next page's
/// token. Without filters, the list reads one page from the store; with
/// them, it reads the whole list and cuts the page from the matches, in
/// the same order and with the same tokens.
pub async fn instances(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    page: PageRequest,
    filter: &TagFilter,
) -> AppResult<(Vec<Instance>, Option<String>)> {
    if filter.is_empty() {
        return crate::app::instances::list(ctx, caller, page).await;
    }
    let (mut all, _) = crate::app::instances::list(ctx, caller, PageRequest::default()).await?;
    all.retain(|i| filter.matches(&i.tags));
    Ok(crate::pagination::cut_in_memory(all, &page, |i| Cursor::of(i.created_at_ms, &i.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn filters_need_every_tag_with_its_exact_value_or_any() {
        let f = TagFilter::parse(&["env=prod".into(), "team".into()]).unwrap();
        assert!(f.matches(&tags(&[("env", "prod"), ("team", "a")])));
        assert!(!f.matches(&tags(&[("env", "prod")])));
        assert!(!f.matches(&tags(&[("env", "Prod"), ("team", "a")])));
        // A value may hold '=': the key ends at the first.
        let f = TagFilter::parse(&["q=a=b".into()]).unwrap();
        assert!(f.matches(&tags(&[("q", "a=b")])));
        assert!(TagFilter::parse(&["=x".into()]).is_err());
        assert!(TagFilter::default().matches(&BTreeMap::new()));
    }

    #[test]
    fn networks_are_tagged_as_their_vpc_and_other_ids_carry_none() {
        let net = nubo_api::ids::NetworkId::generate().to_string();
        let (vpc, _) = crate::networks::ec2_ids(&net);
        assert_eq!(kind_of(&net), Some((vpc.clone(), "vpc")));
        assert_eq!(kind_of(&vpc), Some((vpc, "vpc")));
        assert_eq!(kind_of("fip-0123456789abcdef0").map(|k| k.1), Some("floating-ip"));
        assert_eq!(kind_of("key-0123456789abcdef0").map(|k| k.1), Some("key-pair"));
        assert_eq!(kind_of("h-0123456789abcdef0"), None);
    }

    #[test]
    fn tag_pages_round_trip_and_refuse_foreign_tokens() {
        let t = Tag {
            resource_id: "vol-0123456789abcdef0".into(),
            resource_type: "volume".into(),
            key: "a:b".into(),
            value: "v".into(),
        };
        let p = TagPage::parse(None, Some(&token_of(&t))).unwrap();
        assert_eq!(p, TagPage { limit: Some(MAX_PAGE), after: Some((t.resource_id.clone(), "a:b".into())) });
        let cursor = Cursor::of(1, "i-a").token();
        assert!(TagPage::parse(Some("5"), Some(&cursor)).is_err());
        assert!(TagPage::parse(Some("0"), None).is_err());
        assert!(TagPage::parse(Some("x"), None).is_err());
        assert_eq!(TagPage::parse(Some("7"), None).unwrap(), TagPage { limit: Some(7), after: None });
    }
}
