//! Route sources (`FROM`): which messages a route looks at (spec 4.2).

use crate::message::{MessageSource, keys_equal, simple_upper};

/// The `FROM` path of a route, normalised to the prefix that messages are matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFilter {
    text: String,
    prefix: String,
    /// The prefix's segments in lower case: `/messages/modules/m1/` is `[messages, modules, m1]`.
    segments: Vec<String>,
}

impl SourceFilter {
    /// Normalises a route source: trailing `*`s are stripped (so `ab*` means module `ab`, a
    /// quirk), trailing `/`s too, then one `/` is appended.
    pub fn new(text: &str) -> Self {
        let mut p = text.trim().trim_end_matches('*');
        if p.len() > 1 {
            p = p.trim_end_matches('/');
        }
        let prefix = format!("{}/", p.trim_end_matches('/'));
        let segments = prefix
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_lowercase)
            .collect();
        Self {
            text: text.to_owned(),
            prefix,
            segments,
        }
    }

    /// The source as written (tokens joined): `/messages/*`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The normalised prefix: `/messages/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix's segments, lower case.
    pub(crate) fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Whether a message with source path `path` matches: `path` without trailing `/`s, plus
    /// `/`, starts with the prefix, ignoring case.
    pub fn matches_path(&self, path: &str) -> bool {
        let candidate = format!("{}/", path.trim_end_matches('/'));
        let mut chars = candidate.chars().map(simple_upper);
        self.prefix
            .chars()
            .map(simple_upper)
            .all(|p| chars.next() == Some(p))
    }

    /// Whether a message from `source` matches.
    pub fn matches(&self, source: MessageSource<'_>) -> bool {
        let mut actual = source.segments();
        self.segments.iter().all(|expected| {
            actual
                .next()
                .is_some_and(|segment| keys_equal(segment, expected))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_follow_the_spec_table() {
        for (source, prefix) in [
            ("/*", "/"),
            ("/messages/*", "/messages/"),
            ("/messages", "/messages/"),
            ("/messages/**", "/messages/"),
            (
                "/messages/modules/m1/outputs/o1",
                "/messages/modules/m1/outputs/o1/",
            ),
            ("/twinChangeNotifications", "/twinChangeNotifications/"),
            ("/messages/modules/ab*", "/messages/modules/ab/"),
            ("/messages/*/outputs/*", "/messages/*/outputs/"),
        ] {
            assert_eq!(SourceFilter::new(source).prefix(), prefix, "{source}");
        }
    }

    #[test]
    fn matching_respects_segment_boundaries_and_ignores_case() {
        let m1 = SourceFilter::new("/messages/modules/m1/*");
        assert!(m1.matches_path("/messages/modules/m1"));
        assert!(m1.matches_path("/messages/modules/M1/outputs/o1"));
        assert!(!m1.matches_path("/messages/modules/m10/outputs/o1"));
        let out = SourceFilter::new("/messages/modules/m1/outputs/o1");
        assert!(!out.matches_path("/messages/modules/m1/outputs/o10"));
        assert!(out.matches(MessageSource::ModuleOutput {
            module: "M1",
            output: "O1"
        }));
        assert!(!SourceFilter::new("/messages/*").matches(MessageSource::TwinChangeNotification));
        assert!(SourceFilter::new("/*").matches(MessageSource::TwinChangeNotification));
        assert!(
            !SourceFilter::new("/messages/*/outputs/*").matches(MessageSource::ModuleOutput {
                module: "m1",
                output: "o1"
            })
        );
    }
}
