//! Client commands for tags (`nubo tag set|unset|list`), and the
//! `--filter tag:KEY=VALUE` of the list commands of tagged resources.

use crate::cli::{Conn, TagCmd};
use crate::client_cmds::client;
use crate::output::{emit, table};
use nubo_api::views::{ResourceTags, Tag};
use std::collections::BTreeMap;

/// The server's tag filters (`KEY=VALUE` or `KEY`) of `--filter` values
/// written `tag:KEY=VALUE` or `tag:KEY`, as EC2's filters name tags.
pub fn tag_filters(filters: &[String]) -> anyhow::Result<Vec<String>> {
    filters
        .iter()
        .map(|f| match f.strip_prefix("tag:") {
            Some(t) if !t.is_empty() && !t.starts_with('=') => Ok(t.to_string()),
            _ => Err(anyhow::anyhow!(
                "--filter '{f}': lists filter by tag only, written tag:KEY=VALUE (that value) or tag:KEY (any value)"
            )),
        })
        .collect()
}

/// `KEY=VALUE` arguments as a map (a key given twice keeps its last value).
fn parse_pairs(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(anyhow::anyhow!("'{a}' is not a tag: write KEY=VALUE (KEY= for an empty value)")),
        })
        .collect()
}

fn print_resource(r: &ResourceTags) {
    let rows: Vec<Vec<String>> = r
        .tags
        .iter()
        .map(|(k, v)| vec![r.resource_id.clone(), r.resource_type.clone(), k.clone(), v.clone()])
        .collect();
    table(&["RESOURCE", "TYPE", "KEY", "VALUE"], &rows);
}

pub async fn tag(cmd: TagCmd, conn: &Conn) -> anyhow::Result<()> {
    let c = client(conn)?;
    match cmd {
        TagCmd::Set { resource, tags } => {
            let r = c.set_tags(&resource, &parse_pairs(&tags)?).await?;
            emit(conn.output, &r, print_resource)
        }
        TagCmd::Unset { resource, keys } => {
            let r = c.unset_tags(&resource, &keys).await?;
            emit(conn.output, &r, print_resource)
        }
        TagCmd::List { resource, keys } => {
            let tags: Vec<Tag> = c.tags(resource.as_deref(), &keys).await?;
            emit(conn.output, &tags, |tags| {
                let rows: Vec<Vec<String>> = tags
                    .iter()
                    .map(|t| vec![t.resource_id.clone(), t.resource_type.clone(), t.key.clone(), t.value.clone()])
                    .collect();
                table(&["RESOURCE", "TYPE", "KEY", "VALUE"], &rows);
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_tags_and_pairs_need_a_key() {
        assert_eq!(tag_filters(&["tag:env=prod".into(), "tag:team".into()]).unwrap(), vec!["env=prod", "team"]);
        assert!(tag_filters(&["state=running".into()]).is_err());
        assert!(tag_filters(&["tag:".into()]).is_err());
        let pairs = parse_pairs(&["a=1".into(), "b=".into(), "c=x=y".into()]).unwrap();
        assert_eq!(pairs.get("b").map(String::as_str), Some(""));
        assert_eq!(pairs.get("c").map(String::as_str), Some("x=y"));
        assert!(parse_pairs(&["novalue".into()]).is_err());
        assert!(parse_pairs(&["=v".into()]).is_err());
    }
}
