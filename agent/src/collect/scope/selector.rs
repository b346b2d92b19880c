//! Which pods are in scope: by namespace and by a Kubernetes label
//! selector, written the way `kubectl get -l` takes one. Matching is
//! kube-rs's; this module only reads the text.

use std::collections::BTreeSet;

use kube::core::{Expression, Selector, SelectorExt as _};

use crate::{config::ScopeConfig, enrich::process::kubernetes::PodInfo};

/// The pods `scope.namespaces` and `scope.pod_selector` choose.
#[derive(Clone, Debug)]
pub struct PodScope {
    namespaces: Vec<String>,
    labels: Option<Selector>,
}

impl PodScope {
    /// `None` when the configuration chooses no pods this way.
    pub fn from_config(scope: &ScopeConfig) -> Result<Option<Self>, SelectorError> {
        if !scope.selects_pods() {
            return Ok(None);
        }
        Ok(Some(Self {
            namespaces: scope.namespaces.clone(),
            labels: scope.pod_selector.as_deref().map(parse).transpose()?,
        }))
    }

    /// Whether `pod` is in one of the namespaces (if any are given) and
    /// matches the selector (if one is given).
    pub fn admits(&self, pod: &PodInfo) -> bool {
        let namespace = self.namespaces.is_empty() || self.namespaces.contains(&pod.namespace);
        namespace && self.labels.as_ref().is_none_or(|s| s.matches(&pod.labels))
    }
}

/// Reads a label selector: requirements separated by commas, each one of
/// `key`, `!key`, `key=value`, `key==value`, `key!=value`,
/// `key in (a,b)` or `key notin (a,b)`.
pub fn parse(text: &str) -> Result<Selector, SelectorError> {
    if text.trim().is_empty() {
        return Err(SelectorError(
            "the label selector is empty; write e.g. `app=web`".into(),
        ));
    }
    let mut expressions = Vec::new();
    for requirement in split_requirements(text).map_err(SelectorError)? {
        expressions.push(requirement_of(requirement.trim()).map_err(|problem| {
            SelectorError(format!(
                "`{}` in the label selector {text:?}: {problem}; write e.g. \
                 `app=web,tier in (api,worker),!canary`",
                requirement.trim()
            ))
        })?);
    }
    Ok(Selector::from_iter(expressions))
}

/// What is wrong with a label selector, and how one is written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SelectorError(String);

/// Splits at the commas outside parentheses.
fn split_requirements(text: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!(
                "unbalanced parentheses in the label selector {text:?}"
            ));
        }
    }
    if depth != 0 {
        return Err(format!("unclosed `(` in the label selector {text:?}"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn requirement_of(text: &str) -> Result<Expression, String> {
    if let Some(key) = text.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(key_of(key.trim())?));
    }
    if let Some((head, rest)) = text.split_once('(') {
        let values = rest
            .strip_suffix(')')
            .ok_or("nothing may follow the `)` of a set")?;
        let mut words = head.split_whitespace();
        let (key, operator) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if words.next().is_some() {
            return Err("expected `key in (...)` or `key notin (...)`".into());
        }
        let values = values
            .split(',')
            .map(|v| value_of(v.trim()))
            .collect::<Result<BTreeSet<_>, _>>()?;
        return match operator {
            "in" => Ok(Expression::In(key_of(key)?, values)),
            "notin" => Ok(Expression::NotIn(key_of(key)?, values)),
            other => Err(format!("`{other}` is not a set operator (in, notin)")),
        };
    }
    for (operator, equal) in [("!=", false), ("==", true), ("=", true)] {
        if let Some((key, value)) = text.split_once(operator) {
            let (key, value) = (key_of(key.trim())?, value_of(value.trim())?);
            return Ok(if equal {
                Expression::Equal(key, value)
            } else {
                Expression::NotEqual(key, value)
            });
        }
    }
    if text.contains(['<', '>']) {
        return Err("numeric comparisons are not supported".into());
    }
    Ok(Expression::Exists(key_of(text)?))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name.
fn key_of(key: &str) -> Result<String, String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            let prefix_ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
            if !prefix_ok {
                return Err(format!("`{prefix}` is not a label key prefix (a DNS name)"));
            }
            name
        }
        None => key,
    };
    if name.is_empty() || !name_shaped(name) {
        return Err(format!(
            "`{key}` is not a label key (at most 63 letters, digits, `-`, `_` or `.`, \
             starting and ending with a letter or digit)"
        ));
    }
    Ok(key.to_owned())
}

/// A label value: empty, or shaped like a name.
fn value_of(value: &str) -> Result<String, String> {
    if !value.is_empty() && !name_shaped(value) {
        return Err(format!(
            "`{value}` is not a label value (at most 63 letters, digits, `-`, `_` or `.`)"
        ));
    }
    Ok(value.to_owned())
}

fn name_shaped(text: &str) -> bool {
    let bytes = text.as_bytes();
    let edge = |b: &u8| b.is_ascii_alphanumeric();
    text.len() <= 63
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_every_kind_of_requirement() {
        let selector = parse(
            "app=checkout, tier in (web, api),env!=dev,!canary,team,track==stable,\
             zone notin (b)",
        )
        .unwrap();
        assert_eq!(
            selector.to_string(),
            "app=checkout,tier in (api,web),env!=dev,!canary,team,track=stable,zone notin (b)"
        );
        let pod = labels(&[
            ("app", "checkout"),
            ("tier", "web"),
            ("env", "prod"),
            ("team", "shop"),
            ("track", "stable"),
            ("zone", "a"),
        ]);
        assert!(selector.matches(&pod));
        let mut canary = pod.clone();
        canary.insert("canary".into(), "true".into());
        assert!(!selector.matches(&canary));
        let mut other_tier = pod.clone();
        other_tier.insert("tier".into(), "db".into());
        assert!(!selector.matches(&other_tier));
    }

    #[test]
    fn keys_may_carry_a_prefix() {
        let selector = parse("app.kubernetes.io/name=hearth").unwrap();
        assert!(selector.matches(&labels(&[("app.kubernetes.io/name", "hearth")])));
    }

    #[test]
    fn malformed_selectors_say_what_is_wrong() {
        for (text, problem) in [
            ("", "empty"),
            ("app=", ""),
            ("app in (a,b", "unclosed"),
            ("app in a,b)", "unbalanced"),
            ("app within (a)", "not a set operator"),
            ("replicas>3", "numeric comparisons"),
            ("-app=x", "not a label key"),
            ("app=bad value", "not a label value"),
            ("Bad_Prefix/app=x", "prefix"),
        ] {
            match parse(text) {
                // `app=` is a valid selector: the empty value.
                Ok(selector) => assert_eq!(text, "app=", "{text:?} gave {selector}"),
                Err(err) => assert!(err.0.contains(problem), "{text:?}: {err}"),
            }
        }
    }

    #[test]
    fn pods_need_the_namespace_and_the_labels() {
        let scope = PodScope::from_config(&ScopeConfig {
            namespaces: vec!["shop".into()],
            pod_selector: Some("app=checkout".into()),
            ..ScopeConfig::default()
        })
        .unwrap()
        .unwrap();
        let pod = |namespace: &str, app: &str| PodInfo {
            namespace: namespace.into(),
            labels: labels(&[("app", app)]),
            ..PodInfo::default()
        };
        assert!(scope.admits(&pod("shop", "checkout")));
        assert!(!scope.admits(&pod("shop", "cart")));
        assert!(!scope.admits(&pod("other", "checkout")));
        assert!(
            PodScope::from_config(&ScopeConfig::default())
                .unwrap()
                .is_none()
        );
    }
}
