//! The generated block of a Markdown file (`BENCHMARKS.md`): the lines between a
//! [`BEGIN`] and an [`END`] marker line, which compare.sh replaces after each run and
//! nobody edits by hand.

use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::ChartError;

/// The line before the generated block.
pub const BEGIN: &str = "<!-- compare.sh: begin -->";
/// The line after the generated block.
pub const END: &str = "<!-- compare.sh: end -->";

/// Why the markers of a document do not delimit one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MarkerProblem {
    /// A begin marker without an end marker.
    #[error("the line `{BEGIN}` has no line `{END}` after it")]
    NoEnd,
    /// An end marker without a begin marker.
    #[error("the line `{END}` has no line `{BEGIN}` before it")]
    NoBegin,
    /// The end marker comes first.
    #[error("the line `{END}` comes before the line `{BEGIN}`")]
    EndFirst,
    /// A marker appears more than once.
    #[error("the compare.sh markers appear more than once")]
    Repeated,
}

/// `document` with the lines between its markers replaced by `block` (set off by blank
/// lines), or, when it has no marker, with the markers and the block appended. Everything
/// outside the markers is kept byte for byte.
///
/// # Errors
///
/// A [`MarkerProblem`] when there is only one marker, the end marker comes first, or a
/// marker is repeated: the document is then not touched.
pub fn splice(document: &str, block: &str) -> Result<String, MarkerProblem> {
    let generated = format!("\n{}\n\n", block.trim_matches('\n'));
    let mut begin = Vec::new();
    let mut end = Vec::new();
    let mut offset = 0;
    for line in document.split_inclusive('\n') {
        match line.trim() {
            BEGIN => begin.push((offset, offset + line.len())),
            END => end.push((offset, offset + line.len())),
            _ => {}
        }
        offset += line.len();
    }
    match (begin.as_slice(), end.as_slice()) {
        ([], []) => {
            let mut out = document.to_owned();
            if !out.is_empty() {
                if !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push('\n');
            }
            out.push_str(&format!("{BEGIN}\n{generated}{END}\n"));
            Ok(out)
        }
        (&[(_, after_begin)], &[(before_end, _)]) if after_begin <= before_end => {
            // The begin line ends with a newline: the end line follows it.
            let (head, tail) = (&document[..after_begin], &document[before_end..]);
            Ok(format!("{head}{generated}{tail}"))
        }
        ([_], [_]) => Err(MarkerProblem::EndFirst),
        ([_, ..], []) => Err(MarkerProblem::NoEnd),
        ([], [_, ..]) => Err(MarkerProblem::NoBegin),
        _ => Err(MarkerProblem::Repeated),
    }
}

/// Replaces the generated block of the Markdown file at `path` with `block` (see [`splice`]):
/// written to a temporary file beside it, then renamed over it.
///
/// # Errors
///
/// When the file cannot be read or written, or its markers are wrong (the file is then
/// left as it was).
pub fn splice_file(path: &Path, block: &str) -> Result<(), ChartError> {
    let document = fs::read_to_string(path).map_err(|source| ChartError::Read {
        path: path.to_owned(),
        source,
    })?;
    let spliced = splice(&document, block).map_err(|problem| ChartError::Markers {
        path: path.to_owned(),
        problem,
    })?;
    let temporary = temporary_beside(path);
    let written = fs::write(&temporary, spliced).and_then(|()| fs::rename(&temporary, path));
    written.map_err(|source| {
        let _ = fs::remove_file(&temporary);
        ChartError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// `.<name>.<pid>.tmp` in the folder of `path`, so that the rename stays on one file system.
fn temporary_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "splice".into(), |n| n.to_string_lossy());
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_lines_between_the_markers() {
        let document = format!("# Title\n\nbefore\n{BEGIN}\nold\nblock\n{END}\nafter\n");
        let spliced = splice(&document, "| new |\n").expect("markers");
        assert_eq!(
            spliced,
            format!("# Title\n\nbefore\n{BEGIN}\n\n| new |\n\n{END}\nafter\n")
        );
        // Splicing the same block again changes nothing.
        assert_eq!(splice(&spliced, "| new |").expect("markers"), spliced);
    }

    #[test]
    fn appends_the_markers_when_there_are_none() {
        assert_eq!(
            splice("# Title\ntext", "block").expect("no markers"),
            format!("# Title\ntext\n\n{BEGIN}\n\nblock\n\n{END}\n")
        );
        assert_eq!(
            splice("", "block").expect("empty"),
            format!("{BEGIN}\n\nblock\n\n{END}\n")
        );
    }

    #[test]
    fn refuses_markers_that_do_not_delimit_one_block() {
        let cases = [
            (format!("{BEGIN}\nx\n"), MarkerProblem::NoEnd),
            (format!("x\n{END}\n"), MarkerProblem::NoBegin),
            (format!("{END}\nx\n{BEGIN}\n"), MarkerProblem::EndFirst),
            (
                format!("{BEGIN}\n{END}\n{BEGIN}\n{END}\n"),
                MarkerProblem::Repeated,
            ),
        ];
        for (document, problem) in cases {
            assert_eq!(splice(&document, "b"), Err(problem), "{document}");
        }
    }

    #[test]
    fn splice_file_rewrites_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("BENCHMARKS.md");
        fs::write(&path, format!("a\n{BEGIN}\nold\n{END}\nz\n")).expect("write");
        splice_file(&path, "new").expect("splice");
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            format!("a\n{BEGIN}\n\nnew\n\n{END}\nz\n")
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["BENCHMARKS.md"]);

        fs::write(&path, format!("a\n{END}\n")).expect("write");
        let error = splice_file(&path, "new").expect_err("no begin");
        assert!(matches!(error, ChartError::Markers { .. }), "{error}");
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            format!("a\n{END}\n")
        );
    }
}
