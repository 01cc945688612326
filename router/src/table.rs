//! A route table: every route of a configuration, indexed by source, and the dispatch of a
//! message to its endpoints. [`Router`] holds the running table and swaps in a new one
//! atomically.

use std::borrow::Cow;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use rustc_hash::FxHashMap;

use crate::endpoint::Endpoint;
use crate::error::{ConfigError, ConfigErrors};
use crate::index::ConditionIndex;
use crate::message::Message;
use crate::program::Cx;
use crate::route::CompiledRoute;
use crate::value::Outcome;

/// The priority of a route that names none: below every explicit priority (0..9).
pub const DEFAULT_PRIORITY: u32 = 2_000_000_000;

/// How long a message may wait in an endpoint's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ttl {
    /// This many seconds after it was stored.
    Secs(u64),
    /// Forever (a negative global time to live).
    Never,
}

impl Ttl {
    /// The global store-and-forward TTL from `timeToLiveSecs`: negative means never.
    pub fn from_global_secs(secs: i64) -> Self {
        u64::try_from(secs).map_or(Self::Never, Self::Secs)
    }
}

/// A route as the configuration names it, before compilation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// The route's name (the key in `routes`).
    pub name: String,
    /// The route text.
    pub text: String,
    /// 0 (highest) to 9, or [`DEFAULT_PRIORITY`].
    pub priority: u32,
    /// The route's own TTL in seconds; 0 means the global TTL.
    pub ttl_secs: u32,
}

/// A compiled route in a table.
#[derive(Debug, Clone)]
pub struct TableRoute {
    /// The route's name.
    pub name: String,
    /// The compiled route.
    pub route: CompiledRoute,
    /// Index of its endpoint in [`RouteTable::endpoints`].
    pub endpoint: usize,
    /// Its priority.
    pub priority: u32,
    /// Its effective TTL (the global one when it names none).
    pub ttl: Ttl,
}

/// Where a message goes: one entry per endpoint (decision D6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'t> {
    /// The endpoint.
    pub endpoint: &'t Endpoint,
    /// Its index in [`RouteTable::endpoints`].
    pub endpoint_index: usize,
    /// The best (lowest) priority among the routes that selected the endpoint.
    pub priority: u32,
    /// The longest TTL among those routes.
    pub ttl: Ttl,
}

/// Routes indexed by the segments of their source prefix: a message walks down its own source
/// path and meets exactly the routes whose prefix it starts with. At each node, the routes are
/// indexed by what their conditions require of the message's properties.
#[derive(Debug, Default, Clone)]
struct SourceNode {
    routes: ConditionIndex,
    children: FxHashMap<String, SourceNode>,
}

impl SourceNode {
    fn insert(&mut self, segments: &[String], index: usize, route: &CompiledRoute) {
        match segments.split_first() {
            None => self.routes.insert(index, route.condition().code()),
            Some((first, rest)) => self
                .children
                .entry(first.clone())
                .or_default()
                .insert(rest, index, route),
        }
    }

    /// Ends the building of every node's condition index.
    fn finish(&mut self) {
        self.routes.finish();
        self.children.values_mut().for_each(Self::finish);
    }

    fn child(&self, segment: &str) -> Option<&SourceNode> {
        let key: Cow<'_, str> = if segment
            .bytes()
            .any(|b| b.is_ascii_uppercase() || !b.is_ascii())
        {
            Cow::Owned(segment.to_lowercase())
        } else {
            Cow::Borrowed(segment)
        };
        self.children.get(key.as_ref())
    }
}

/// Compiled routes with their source index; immutable once built.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<TableRoute>,
    endpoints: Vec<Endpoint>,
    index: SourceNode,
    default_ttl: Ttl,
}

impl RouteTable {
    /// Compiles every route.
    ///
    /// # Errors
    ///
    /// Every bad route, each named (the whole table is rejected if one is bad).
    pub fn new(specs: &[RouteSpec], default_ttl: Ttl) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut table = Self {
            routes: Vec::with_capacity(specs.len()),
            endpoints: Vec::new(),
            index: SourceNode::default(),
            default_ttl,
        };
        for spec in specs {
            match CompiledRoute::compile(&spec.text) {
                Ok(route) => table.push(spec, route),
                Err(error) => errors.push(ConfigError::Route {
                    name: spec.name.clone(),
                    error,
                }),
            }
        }
        if errors.is_empty() {
            table.index.finish();
            Ok(table)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// A table with no routes: every message is accepted and dropped.
    pub fn empty() -> Self {
        Self {
            routes: Vec::new(),
            endpoints: Vec::new(),
            index: SourceNode::default(),
            default_ttl: Ttl::Never,
        }
    }

    fn push(&mut self, spec: &RouteSpec, route: CompiledRoute) {
        let endpoint = match self.endpoints.iter().position(|e| e == route.endpoint()) {
            Some(i) => i,
            None => {
                self.endpoints.push(route.endpoint().clone());
                self.endpoints.len() - 1
            }
        };
        let index = self.routes.len();
        self.index.insert(route.source().segments(), index, &route);
        self.routes.push(TableRoute {
            name: spec.name.clone(),
            route,
            endpoint,
            priority: spec.priority,
            ttl: match spec.ttl_secs {
                0 => self.default_ttl,
                secs => Ttl::Secs(u64::from(secs)),
            },
        });
    }

    /// The routes, in configuration order.
    pub fn routes(&self) -> &[TableRoute] {
        &self.routes
    }

    /// The distinct endpoints of all routes.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The global TTL routes without their own fall back to.
    pub fn default_ttl(&self) -> Ttl {
        self.default_ttl
    }

    /// The endpoints `message` goes to, one entry per endpoint.
    pub fn dispatch(&self, message: &Message) -> Vec<Delivery<'_>> {
        let mut out = Vec::new();
        self.dispatch_into(message, &mut out);
        out
    }

    /// Like [`RouteTable::dispatch`], appending to `out` (which the caller may reuse).
    /// Only routes whose source the message matches are evaluated, and among them only those
    /// whose required property value (`$connectionDeviceId = 'dev-17'`) or property the
    /// message has; the body is parsed at most once, by the first of them that reads it.
    pub fn dispatch_into<'t>(&'t self, message: &Message, out: &mut Vec<Delivery<'t>>) {
        self.dispatch_in(&Cx::new(message), out);
    }

    /// Like [`RouteTable::dispatch_into`], in a context the caller holds (and can inspect, e.g.
    /// whether the body was parsed).
    pub fn dispatch_in<'t>(&'t self, cx: &Cx<'_>, out: &mut Vec<Delivery<'t>>) {
        let mut node = &self.index;
        self.fire(node, cx, out);
        for segment in cx.message().source().segments() {
            match node.child(segment) {
                Some(child) => node = child,
                None => return,
            }
            self.fire(node, cx, out);
        }
    }

    fn fire<'t>(&'t self, node: &SourceNode, cx: &Cx<'_>, out: &mut Vec<Delivery<'t>>) {
        node.routes.for_each_candidate(cx, |i| {
            let route = &self.routes[i];
            if route.route.condition().evaluate_in(cx) != Outcome::True {
                return;
            }
            match out.iter_mut().find(|d| d.endpoint_index == route.endpoint) {
                Some(d) => {
                    d.priority = d.priority.min(route.priority);
                    d.ttl = d.ttl.max(route.ttl);
                }
                None => out.push(Delivery {
                    endpoint: &self.endpoints[route.endpoint],
                    endpoint_index: route.endpoint,
                    priority: route.priority,
                    ttl: route.ttl,
                }),
            }
        });
    }
}

/// The running route table, replaced atomically by a new one while messages flow. Readers take
/// no lock: [`Router::load`] is a few atomic operations.
#[derive(Debug)]
pub struct Router {
    table: ArcSwap<RouteTable>,
}

impl Router {
    /// A router running `table`.
    pub fn new(table: RouteTable) -> Self {
        Self {
            table: ArcSwap::from_pointee(table),
        }
    }

    /// The current table; a message dispatched with it sees one table from start to end.
    pub fn load(&self) -> Guard<Arc<RouteTable>> {
        self.table.load()
    }

    /// Replaces the table; returns the one it replaced.
    pub fn replace(&self, table: RouteTable) -> Arc<RouteTable> {
        self.table.swap(Arc::new(table))
    }
}
