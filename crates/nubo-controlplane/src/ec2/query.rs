//! The EC2 Query protocol's parameters: a flat form (`Action=...&
//! InstanceId.1=i-...&Filter.1.Name=...&Filter.1.Value.1=...`) read into
//! typed values. Lists are `Name.N`, structures in lists `Name.N.Member`,
//! as botocore's EC2 serializer writes them. Every accessor says which
//! parameter was wrong and what it expects.

use super::error::{Domain, Ec2Error, Ec2Result, InDomain};
use std::collections::BTreeMap;

/// The request's parameters (or one structure's members).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    map: BTreeMap<String, String>,
}

/// `Filter.N`: a name and the values any of which may match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

impl Params {
    pub fn from_form(body: &[u8]) -> Self {
        Self { map: form_urlencoded::parse(body).into_owned().collect() }
    }

    /// Adds the pairs of a query string (a GET request's parameters).
    pub fn merge_form(&mut self, query: &[u8]) {
        self.map.extend(form_urlencoded::parse(query).into_owned());
    }

    /// Every parameter, sorted by name (for ClientToken's request hash).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.map.iter()
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    pub fn required(&self, name: &str) -> Ec2Result<&str> {
        self.str(name).filter(|v| !v.is_empty()).ok_or_else(|| Ec2Error::missing(name))
    }

    pub fn bool(&self, name: &str) -> Ec2Result<Option<bool>> {
        match self.str(name) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(Ec2Error::invalid(format!(
                "Invalid value '{}' for {name}: use true or false",
                v.chars().take(40).collect::<String>()
            ))),
        }
    }

    pub fn int(&self, name: &str) -> Ec2Result<Option<i64>> {
        match self.str(name) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                Ec2Error::invalid(format!(
                    "Invalid value '{}' for {name}: expected an integer",
                    v.chars().take(40).collect::<String>()
                ))
            }),
        }
    }

    /// An integer within `range`, or `None` when absent.
    pub fn int_in(&self, name: &str, range: std::ops::RangeInclusive<i64>) -> Ec2Result<Option<i64>> {
        match self.int(name)? {
            Some(v) if !range.contains(&v) => Err(Ec2Error::invalid(format!(
                "Invalid value '{v}' for {name}: it must be between {} and {}",
                range.start(),
                range.end()
            ))),
            other => Ok(other),
        }
    }

    /// The members `prefix.N` in the order of N (`InstanceId.1`, `InstanceId.2`, ...).
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let mut out: Vec<(u64, String)> = self
            .map
            .iter()
            .filter_map(|(k, v)| {
                let n = k.strip_prefix(prefix)?.strip_prefix('.')?;
                Some((n.parse::<u64>().ok()?, v.clone()))
            })
            .collect();
        out.sort_by_key(|(n, _)| *n);
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// The structures `prefix.N.*`, each with its members under their own names.
    pub fn structs(&self, prefix: &str) -> Vec<Params> {
        let mut out: BTreeMap<u64, Params> = BTreeMap::new();
        for (k, v) in &self.map {
            let Some(rest) = k.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) else { continue };
            let Some((n, member)) = rest.split_once('.') else { continue };
            let Ok(n) = n.parse::<u64>() else { continue };
            out.entry(n).or_default().map.insert(member.to_string(), v.clone());
        }
        out.into_values().collect()
    }

    /// `Filter.N.Name` and `Filter.N.Value.M`.
    pub fn filters(&self) -> Ec2Result<Vec<Filter>> {
        self.structs("Filter")
            .into_iter()
            .map(|f| {
                Ok(Filter {
                    name: f.str("Name").ok_or_else(|| Ec2Error::missing("Filter.N.Name"))?.to_string(),
                    values: f.list("Value"),
                })
            })
            .collect()
    }

    /// `prefix.N.Key` / `prefix.N.Value` pairs (the value absent: `None`).
    pub fn tags(&self, prefix: &str) -> Ec2Result<Vec<(String, Option<String>)>> {
        self.structs(prefix)
            .into_iter()
            .map(|t| {
                let key = t.str("Key").ok_or_else(|| Ec2Error::missing(&format!("{prefix}.N.Key")))?;
                Ok((key.to_string(), t.str("Value").map(str::to_string)))
            })
            .collect()
    }
}

/// `MaxResults` and `NextToken` (an offset into the filtered list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub max: Option<usize>,
    pub offset: usize,
}

impl Page {
    /// `MaxResults` between `min` and `max`, as the action allows.
    pub fn parse(p: &Params, min: i64, max: i64) -> Ec2Result<Self> {
        let max_results = p.int_in("MaxResults", min..=max)?.map(|v| v as usize);
        let offset = match p.str("NextToken") {
            None | Some("") => 0,
            Some(t) => t.strip_prefix("nubo-offset-").and_then(|n| n.parse().ok()).ok_or_else(|| {
                Ec2Error::bad(
                    "InvalidPaginationToken",
                    "The NextToken is not valid: pass the nextToken of the previous answer unchanged",
                )
            })?,
        };
        Ok(Self { max: max_results, offset })
    }

    /// This page of `items`, and the token of the next one when there is one.
    pub fn apply<T>(&self, items: Vec<T>) -> (Vec<T>, Option<String>) {
        let total = items.len();
        let page: Vec<T> = items.into_iter().skip(self.offset).take(self.max.unwrap_or(usize::MAX)).collect();
        let end = self.offset + page.len();
        let next = (self.max.is_some() && end < total).then(|| format!("nubo-offset-{end}"));
        (page, next)
    }
}

/// EC2's filter wildcards: `*` any run, `?` any one character, `\` escapes.
/// Matched greedily with one remembered `*` (the classic linear-space
/// algorithm, at most pattern x value steps): a recursive matcher takes
/// exponential time on a pattern of many `*`s, which anyone may send.
pub fn glob(pattern: &str, value: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Star,
        One,
        Lit(char),
    }
    let mut p = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        p.push(match c {
            '*' => Tok::Star,
            '?' => Tok::One,
            '\\' => Tok::Lit(chars.next().unwrap_or('\\')),
            c => Tok::Lit(c),
        });
    }
    let v: Vec<char> = value.chars().collect();
    let (mut pi, mut vi) = (0usize, 0usize);
    // The last `*` seen and where in the value it was tried up to.
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        match p.get(pi) {
            Some(Tok::One) => {
                pi += 1;
                vi += 1;
            }
            Some(Tok::Lit(c)) if *c == v[vi] => {
                pi += 1;
                vi += 1;
            }
            Some(Tok::Star) => {
                star = Some((pi, vi));
                pi += 1;
            }
            _ => match star {
                // Let the last `*` take one more character, and retry.
                Some((sp, sv)) => {
                    star = Some((sp, sv + 1));
                    pi = sp + 1;
                    vi = sv + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|t| *t == Tok::Star)
}

/// Checks that every filter is one `known` lists (`tag:KEY` is always
/// known where `tags` is true).
/// The tags a create action's `TagSpecification.N` give `resource_type`,
/// each checked against EC2's limits before anything is made; a
/// specification for another type is refused, naming the one allowed.
pub fn tag_specs(p: &Params, resource_type: &str) -> Ec2Result<Vec<(String, String)>> {
    let mut tags = Vec::new();
    for spec in p.structs("TagSpecification") {
        match spec.str("ResourceType") {
            Some(t) if t == resource_type => {}
            other => {
                return Err(Ec2Error::invalid(format!(
                    "TagSpecification ResourceType '{}' is not valid here: use '{resource_type}'",
                    other.unwrap_or("").chars().take(40).collect::<String>()
                )))
            }
        }
        for (k, v) in spec.tags("Tag")? {
            let v = v.unwrap_or_default();
            crate::validate::tag(&k, &v).in_domain(Domain::Other)?;
            tags.push((k, v));
        }
    }
    Ok(tags)
}

pub fn check_filters(filters: &[Filter], known: &[&str], tags: bool) -> Ec2Result<()> {
    for f in filters {
        let ok = known.contains(&f.name.as_str())
            || (tags && (f.name.starts_with("tag:") || f.name == "tag-key" || f.name == "tag-value"));
        if !ok {
            return Err(Ec2Error::invalid(format!(
                "The filter '{}' is invalid; supported filters: {}{}",
                f.name.chars().take(80).collect::<String>(),
                known.join(", "),
                if tags { ", tag:KEY, tag-key, tag-value" } else { "" }
            )));
        }
    }
    Ok(())
}

/// Whether an item passes every filter (all filters, any of each one's
/// values). `field` gives the item's values for a filter name.
pub fn matches(filters: &[Filter], field: impl Fn(&str) -> Vec<String>) -> bool {
    filters.iter().all(|f| {
        let have = field(&f.name);
        f.values.iter().any(|want| have.iter().any(|h| glob(want, h)))
    })
}

/// The values of the tag filters (`tag:KEY`, `tag-key`, `tag-value`) for `tags`.
pub fn tag_field(name: &str, tags: Option<&BTreeMap<String, String>>) -> Vec<String> {
    let Some(tags) = tags else { return Vec::new() };
    if let Some(key) = name.strip_prefix("tag:") {
        return tags.get(key).cloned().into_iter().collect();
    }
    match name {
        "tag-key" => tags.keys().cloned().collect(),
        "tag-value" => tags.values().cloned().collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lists_structs_and_filters() {
        let p = Params::from_form(
            b"Action=DescribeInstances&InstanceId.2=i-b&InstanceId.1=i-a&InstanceId.10=i-j\
              &Filter.1.Name=tag%3AName&Filter.1.Value.1=web*&Filter.2.Name=instance-state-name&Filter.2.Value.1=running",
        );
        assert_eq!(p.list("InstanceId"), ["i-a", "i-b", "i-j"]);
        let f = p.filters().unwrap();
        assert_eq!(f[0], Filter { name: "tag:Name".into(), values: vec!["web*".into()] });
        assert_eq!(f[1].name, "instance-state-name");
        assert!(p.required("ImageId").is_err());
        assert_eq!(Params::from_form(b"DryRun=true").bool("DryRun").unwrap(), Some(true));
        assert!(Params::from_form(b"DryRun=yes").bool("DryRun").is_err());
    }

    #[test]
    fn a_pattern_of_many_stars_takes_linear_time() {
        let pattern = format!("{}x", "*".repeat(60));
        let started = std::time::Instant::now();
        assert!(!glob(&pattern, &"a".repeat(64)));
        assert!(glob(&pattern, &format!("{}x", "a".repeat(63))));
        assert!(started.elapsed() < std::time::Duration::from_millis(100), "{:?}", started.elapsed());
    }

    #[test]
    fn globs_and_pages() {
        assert!(glob("web*", "web-1"));
        assert!(glob("w?b", "wab"));
        assert!(!glob("web", "web-1"));
        assert!(glob("a\\*", "a*"));
        let page = Page { max: Some(2), offset: 0 };
        let (items, next) = page.apply(vec![1, 2, 3]);
        assert_eq!((items, next.as_deref()), (vec![1, 2], Some("nubo-offset-2")));
        let p = Params::from_form(b"MaxResults=2&NextToken=nubo-offset-2");
        let (items, next) = Page::parse(&p, 1, 1000).unwrap().apply(vec![1, 2, 3]);
        assert_eq!((items, next), (vec![3], None));
        assert!(Page::parse(&Params::from_form(b"NextToken=zzz"), 1, 10).is_err());
    }
}
