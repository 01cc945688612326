//! `edgehub route check` and `edgehub route test`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use router::interpret::Explanation;
use router::{
    CompiledRoute, Condition, EdgeHubRoutes, Endpoint, Message, Outcome, RouteError, Warning,
};
use serde::Serialize;
use serde_json::Value;

use super::INVALID;
use crate::manifest;

#[derive(Debug, Subcommand)]
pub(super) enum RouteCommand {
    /// Check a route, or every route of a deployment manifest's $edgeHub.
    ///
    /// Prints one JSON object and exits 0 when valid; prints the error with its line and
    /// column on stderr and exits 2 when not.
    Check(CheckArgs),
    /// Evaluate a route or a condition against a message; prints
    /// {"result": "true"|"false"|"undefined", "routed": true|false}.
    Test(TestArgs),
}

#[derive(Debug, Args)]
pub(super) struct CheckArgs {
    /// The route text, e.g. "FROM /messages/* WHERE temp > 30 INTO $upstream".
    #[arg(required_unless_present = "manifest", conflicts_with = "manifest")]
    route: Option<String>,
    /// A deployment manifest whose $edgeHub routes are all checked.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["route", "condition"]))]
pub(super) struct TestArgs {
    /// The route to test.
    #[arg(long, allow_hyphen_values = true)]
    route: Option<String>,
    /// A condition to test on its own (it may start with '-', e.g. "-5 = -5").
    #[arg(long, allow_hyphen_values = true)]
    condition: Option<String>,
    /// A JSON file with the message: body, bodyEncodedAs, contentType, contentEncoding,
    /// systemProperties, properties.
    #[arg(long, value_name = "FILE")]
    message: PathBuf,
    /// The message's source path; by default derived from its system properties.
    #[arg(long, value_name = "PATH")]
    source: Option<String>,
    /// Also show the value of every part of the condition.
    #[arg(long)]
    explain: bool,
}

pub(super) fn run(command: RouteCommand) -> Result<ExitCode> {
    match command {
        RouteCommand::Check(CheckArgs {
            route: Some(route), ..
        }) => Ok(check_one(&route)),
        RouteCommand::Check(CheckArgs {
            manifest: Some(path),
            ..
        }) => check_manifest(&path),
        RouteCommand::Check(_) => unreachable!("clap requires a route or a manifest"),
        RouteCommand::Test(args) => test(&args),
    }
}

/// The JSON printed for a valid route.
#[derive(Debug, Serialize)]
struct RouteReport<'a> {
    source: &'a str,
    condition: &'a str,
    sink: SinkReport<'a>,
    warnings: &'a [Warning],
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum SinkReport<'a> {
    Upstream,
    Module {
        #[serde(rename = "moduleId")]
        module_id: &'a str,
        input: &'a str,
    },
}

impl<'a> RouteReport<'a> {
    fn new(route: &'a CompiledRoute) -> Self {
        Self {
            source: route.source().text(),
            condition: route.condition().text(),
            sink: match route.endpoint() {
                Endpoint::Upstream => SinkReport::Upstream,
                Endpoint::ModuleInput { module, input } => SinkReport::Module {
                    module_id: module,
                    input,
                },
            },
            warnings: route.warnings(),
        }
    }
}

fn check_one(text: &str) -> ExitCode {
    match CompiledRoute::compile(text) {
        Ok(route) => {
            println!("{}", to_json(&RouteReport::new(&route)));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprint!("{}", describe_error(text, &error));
            ExitCode::from(INVALID)
        }
    }
}

fn check_manifest(path: &Path) -> Result<ExitCode> {
    let manifest = match read_json(path)? {
        Ok(v) => v,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(INVALID));
        }
    };
    let desired = match manifest::desired_properties(&manifest, "$edgeHub") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return Ok(ExitCode::from(INVALID));
        }
    };
    let routes = match EdgeHubRoutes::from_desired(desired) {
        Ok(r) => r,
        Err(errors) => {
            for error in errors.0 {
                eprintln!("error: {error}");
            }
            return Ok(ExitCode::from(INVALID));
        }
    };
    let mut report = serde_json::Map::new();
    let mut bad = 0;
    for spec in &routes.routes {
        match CompiledRoute::compile(&spec.text) {
            Ok(route) => {
                report.insert(
                    spec.name.clone(),
                    serde_json::to_value(RouteReport::new(&route))?,
                );
            }
            Err(error) => {
                bad += 1;
                eprint!(
                    "route '{}': {}",
                    spec.name,
                    describe_error(&spec.text, &error)
                );
            }
        }
    }
    if bad > 0 {
        eprintln!("{bad} of {} routes are invalid", routes.routes.len());
        return Ok(ExitCode::from(INVALID));
    }
    println!(
        "{}",
        Value::Object(
            [("routes".to_owned(), Value::Object(report))]
                .into_iter()
                .collect()
        )
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct TestReport<'a> {
    result: &'a str,
    routed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    explain: Option<ExplainNode>,
}

/// `--explain` output: a sub-expression and its value.
#[derive(Debug, Serialize)]
struct ExplainNode {
    expr: String,
    line: usize,
    column: usize,
    #[serde(rename = "type")]
    ty: &'static str,
    value: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    children: Vec<ExplainNode>,
}

impl From<&Explanation> for ExplainNode {
    fn from(e: &Explanation) -> Self {
        Self {
            expr: e.expr.clone(),
            line: e.line,
            column: e.column,
            ty: e.ty.name(),
            value: e.value.clone(),
            children: e.children.iter().map(Self::from).collect(),
        }
    }
}

fn test(args: &TestArgs) -> Result<ExitCode> {
    let message = match read_json(&args.message)?.and_then(|v| Message::from_json(&v)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {}: {e}", args.message.display());
            return Ok(ExitCode::from(INVALID));
        }
    };
    let (text, compiled) = match (&args.route, &args.condition) {
        (Some(route), _) => (route, CompiledRoute::compile(route).map(Some)),
        (None, Some(condition)) => (condition, Condition::compile(condition).map(|_| None)),
        (None, None) => unreachable!("clap requires --route or --condition"),
    };
    let route = match compiled {
        Ok(route) => route,
        Err(error) => {
            eprint!("{}", describe_error(text, &error));
            return Ok(ExitCode::from(INVALID));
        }
    };
    let condition = match &route {
        Some(route) => route.condition().clone(),
        None => Condition::compile(text).expect("compiled above"),
    };
    let outcome = condition.evaluate(&message);
    let source_matches = match (&route, &args.source) {
        (None, _) => true,
        (Some(route), Some(path)) => route.source().matches_path(path),
        (Some(route), None) => route.source().matches(message.source()),
    };
    let explanation = args.explain.then(|| condition.explain(&message)).flatten();
    if let Some(e) = &explanation {
        let mut tree = String::new();
        write_tree(&mut tree, e, 0);
        if route.is_some() && !source_matches {
            tree.push_str(
                "(the route's source does not match the message, so it does not route)\n",
            );
        }
        eprint!("{tree}");
    }
    let report = TestReport {
        result: outcome.as_str(),
        routed: source_matches && outcome == Outcome::True,
        explain: explanation.as_ref().map(ExplainNode::from),
    };
    println!("{}", to_json(&report));
    Ok(ExitCode::SUCCESS)
}

fn write_tree(out: &mut String, e: &Explanation, depth: usize) {
    let _ = writeln!(
        out,
        "{:indent$}{}  =>  {}",
        "",
        e.expr,
        e.value,
        indent = depth * 2
    );
    for child in &e.children {
        write_tree(out, child, depth + 1);
    }
}

/// Reads a JSON file: the outer error is I/O, the inner one a malformed document.
fn read_json(path: &Path) -> Result<Result<Value, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)
        .map_err(|e| format!("{} is not valid JSON: {e}", path.display())))
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("reports serialise")
}

/// The error, where it is (line and column), and the offending line with a caret under it.
fn describe_error(text: &str, error: &RouteError) -> String {
    let span = error.span;
    let mut out = format!(
        "error: {} error at line {}, column {}: {}\n",
        error.stage, span.line, span.column, error.message
    );
    if let Some(line) = text.lines().nth(span.line.saturating_sub(1)) {
        let _ = writeln!(out, "  {line}");
        let _ = writeln!(
            out,
            "  {:width$}^",
            "",
            width = span.column.saturating_sub(1)
        );
    }
    out
}
