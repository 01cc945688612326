//! The condition index of the routes of one source: a route whose condition can be true only
//! when a property equals a constant (`$connectionDeviceId = 'dev-17'`), or only when a
//! property is present (`as_number(temperature) > 30`), is filed under that property. A
//! message reads each indexed property once, and evaluates only the routes filed under the
//! value it has, those filed under its presence, and the routes that have no such requirement.
//! A per-device routing table of 1,000 routes then costs one hash look-up per message instead
//! of 1,000 evaluations.
//!
//! The index only skips routes whose condition it has proved not true for the message; every
//! route it yields is evaluated in full, in configuration order, so dispatch gives exactly the
//! endpoints (and the order) that evaluating every route gives.
//!
//! Why a requirement holds, shape by shape (spec 6.5, 6.6): a route fires only when its
//! condition is exactly true; `a AND b` is true only when both are true, so a requirement of
//! either conjunct is one of the conjunction; a property compared with a string constant by
//! `=` is true only when the property is present and its value has the same UTF-16 code units
//! (the same UTF-8 bytes) as the constant, which is what the hash map's key equality tests; a
//! comparison, `is_defined`, `is_string`, `contains`-like test or number function of a missing
//! property is undefined or false, never true. `OR`, `NOT`, `??` and body values give no
//! requirement: such routes are evaluated for every message, as before.

use rustc_hash::FxHashMap;

use crate::program::{BoolCode, Code, Cx, Lookup, NumArg, NumCode, StrArg, StrCode};
use crate::value::CmpOp;

/// What a condition needs of one property to be true.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Requirement<'c> {
    /// The property must be present and equal this string, byte for byte.
    Equals(&'c Lookup, &'c str),
    /// The property must be present.
    Present(&'c Lookup),
}

impl<'c> Requirement<'c> {
    /// The requirement of a whole condition, if it has one: one without which the condition's
    /// outcome is never [`Outcome::True`](crate::Outcome::True). Equality is preferred, since
    /// it selects fewer routes; among equal kinds, the leftmost conjunct wins.
    pub(crate) fn of(code: &'c Code) -> Option<Self> {
        match code {
            Code::Bool(code) => Self::of_bool(code),
            // A body value, a number, a string, null or undefined as the whole condition: left
            // to evaluation.
            _ => None,
        }
    }

    fn of_bool(code: &'c BoolCode) -> Option<Self> {
        match code {
            BoolCode::And(a, b) => match (Self::of_bool(a), Self::of_bool(b)) {
                (Some(Self::Present(_)), Some(equals @ Self::Equals(..))) => Some(equals),
                (Some(left), _) => Some(left),
                (None, right) => right,
            },
            BoolCode::PropCmpConst(CmpOp::Eq, lookup, constant) => {
                Some(Self::Equals(lookup, constant))
            }
            BoolCode::PropCmpConst(_, lookup, _) => Some(Self::Present(lookup)),
            BoolCode::StrCmpConst(_, a, _) | BoolCode::DefinedStr(a) => {
                strict_str(a).map(Self::Present)
            }
            BoolCode::StrCmp(_, a, b) => strict_str(a).or_else(|| strict_str(b)).map(Self::Present),
            BoolCode::NumCmp(_, a, b) => strict_num(a).or_else(|| strict_num(b)).map(Self::Present),
            BoolCode::NumCmpConst(_, a, _) | BoolCode::DefinedNum(a) | BoolCode::FiniteNum(a) => {
                strict_num(a).map(Self::Present)
            }
            BoolCode::Text(_, s, fragment) => strict_str_arg(s)
                .or_else(|| strict_str_arg(fragment))
                .map(Self::Present),
            BoolCode::Const(_)
            | BoolCode::Not(_)
            | BoolCode::Or(..)
            | BoolCode::Coalesce(..)
            | BoolCode::BoolCmp(..)
            | BoolCode::DynCmp(..)
            | BoolCode::DynCmpConst(..)
            | BoolCode::DynLogic(..)
            | BoolCode::DynNot(_)
            | BoolCode::DefinedBool(_)
            | BoolCode::BoolIsBool(_)
            | BoolCode::DynTest(..) => None,
        }
    }

    fn lookup(self) -> &'c Lookup {
        match self {
            Self::Equals(lookup, _) | Self::Present(lookup) => lookup,
        }
    }
}

/// A property whose absence makes this string undefined (`None`).
fn strict_str(code: &StrCode) -> Option<&Lookup> {
    match code {
        StrCode::Prop(lookup) => Some(lookup),
        // Each of these returns `None` as soon as the part, or the string it works on, is.
        StrCode::Concat(parts) => parts.iter().find_map(strict_str_arg),
        StrCode::Lower(a) | StrCode::Upper(a) | StrCode::Substring(a, ..) => strict_str_arg(a),
        StrCode::Const(_) | StrCode::Coalesce(..) => None,
    }
}

fn strict_str_arg(arg: &StrArg) -> Option<&Lookup> {
    match arg {
        StrArg::Str(code) => strict_str(code),
        StrArg::Dyn(_) => None,
    }
}

/// A property whose absence makes this number undefined (NaN): every operation below maps an
/// undefined operand to NaN (IEEE-754 arithmetic, and `builtins::math`, `builtins::power`).
fn strict_num(code: &NumCode) -> Option<&Lookup> {
    match code {
        NumCode::Neg(a) => strict_num(a),
        NumCode::Arith(_, a, b) => strict_num(a).or_else(|| strict_num(b)),
        NumCode::Math(_, a) => strict_num_arg(a),
        NumCode::Power(a, b) => strict_num_arg(a).or_else(|| strict_num_arg(b)),
        NumCode::Parse(s) => strict_str(s),
        NumCode::Length(s) => strict_str_arg(s),
        NumCode::IndexOf(s, fragment) => strict_str_arg(s).or_else(|| strict_str_arg(fragment)),
        NumCode::Const(_) | NumCode::DynAsNumber(_) | NumCode::Coalesce(..) => None,
    }
}

fn strict_num_arg(arg: &NumArg) -> Option<&Lookup> {
    match arg {
        NumArg::Num(code) => strict_num(code),
        NumArg::Dyn(_) => None,
    }
}

/// How many routes a property needs to be indexed (see [`ConditionIndex::finish`]).
const INDEX_FROM: usize = 4;

/// The routes filed under one property.
#[derive(Debug, Clone)]
struct PropertyRoutes {
    lookup: Lookup,
    /// Routes that need the property to equal the key, in increasing order.
    equals: FxHashMap<Box<str>, Vec<usize>>,
    /// Routes that need the property to be present, in increasing order.
    present: Vec<usize>,
}

impl PropertyRoutes {
    fn len(&self) -> usize {
        self.present.len() + self.equals.values().map(Vec::len).sum::<usize>()
    }

    fn into_routes(self) -> impl Iterator<Item = usize> {
        self.present
            .into_iter()
            .chain(self.equals.into_values().flatten())
    }
}

/// The routes of one source, indexed by what their conditions require. Routes are numbers
/// (their place in the table), added in increasing order; [`ConditionIndex::finish`] ends the
/// building.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConditionIndex {
    /// Routes without a requirement: candidates for every message.
    always: Vec<usize>,
    /// One entry per distinct property some route requires.
    properties: Vec<PropertyRoutes>,
    /// Position in `properties` of each property, while the index is built.
    positions: FxHashMap<Lookup, usize>,
}

impl ConditionIndex {
    /// Files `route`, whose condition is `code`. Routes must come in increasing order.
    pub(crate) fn insert(&mut self, route: usize, code: &Code) {
        let Some(requirement) = Requirement::of(code) else {
            self.always.push(route);
            return;
        };
        let lookup = requirement.lookup();
        let at = *self.positions.entry(lookup.clone()).or_insert_with(|| {
            self.properties.push(PropertyRoutes {
                lookup: lookup.clone(),
                equals: FxHashMap::default(),
                present: Vec::new(),
            });
            self.properties.len() - 1
        });
        let property = &mut self.properties[at];
        match requirement {
            Requirement::Equals(_, constant) => {
                property
                    .equals
                    .entry(constant.into())
                    .or_default()
                    .push(route);
            }
            Requirement::Present(_) => property.present.push(route),
        }
    }

    /// Ends the building: a property that fewer than [`INDEX_FROM`] routes require gives its
    /// routes back to those evaluated for every message. Reading it and probing its map would
    /// cost about what evaluating them does (a small table dispatches as it did without the
    /// index).
    pub(crate) fn finish(&mut self) {
        self.positions = FxHashMap::default();
        let (indexed, small): (Vec<_>, Vec<_>) = std::mem::take(&mut self.properties)
            .into_iter()
            .partition(|property| property.len() >= INDEX_FROM);
        if !small.is_empty() {
            self.always
                .extend(small.into_iter().flat_map(PropertyRoutes::into_routes));
            self.always.sort_unstable();
        }
        self.properties = indexed;
    }

    /// Calls `f` with every route whose requirement the message in `cx` meets, in increasing
    /// order; each property is read once.
    pub(crate) fn for_each_candidate(&self, cx: &Cx<'_>, mut f: impl FnMut(usize)) {
        if self.properties.is_empty() {
            self.always.iter().for_each(|&route| f(route));
            return;
        }
        let mut lists = SortedLists::default();
        lists.push(&self.always);
        for property in &self.properties {
            let Some(value) = property.lookup.get(cx) else {
                continue;
            };
            if let Some(routes) = property.equals.get(value) {
                lists.push(routes);
            }
            lists.push(&property.present);
        }
        lists.merge(f);
    }
}

/// How many lists [`SortedLists`] merges without allocating.
const INLINE_LISTS: usize = 8;

/// Disjoint, increasing lists of routes to merge into one increasing sequence. The common
/// case (the routes without a requirement and one or two lists of candidates) needs no
/// allocation; beyond [`INLINE_LISTS`], the rest is gathered and sorted.
#[derive(Default)]
struct SortedLists<'a> {
    lists: [&'a [usize]; INLINE_LISTS],
    len: usize,
    overflow: Vec<usize>,
}

impl<'a> SortedLists<'a> {
    fn push(&mut self, list: &'a [usize]) {
        if list.is_empty() {
            return;
        }
        if self.len < INLINE_LISTS {
            self.lists[self.len] = list;
            self.len += 1;
        } else {
            self.overflow.extend_from_slice(list);
        }
    }

    fn merge(mut self, mut f: impl FnMut(usize)) {
        self.overflow.sort_unstable();
        let lists = &mut self.lists[..self.len];
        match (lists, self.overflow.as_slice()) {
            ([], extra) => extra.iter().for_each(|&route| f(route)),
            ([only], []) => only.iter().for_each(|&route| f(route)),
            (lists, extra) => Self::merge_inline(lists, extra, f),
        }
    }

    /// A k-way merge by smallest head: k is small, and so is the number of candidates.
    fn merge_inline(lists: &mut [&[usize]], extra: &[usize], mut f: impl FnMut(usize)) {
        let mut extra = extra;
        loop {
            let mut best: Option<(usize, usize)> = None;
            for (at, list) in lists.iter().enumerate() {
                if let Some(&head) = list.first()
                    && best.is_none_or(|(_, smallest)| head < smallest)
                {
                    best = Some((at, head));
                }
            }
            match (best, extra.first()) {
                (Some((_, head)), Some(&e)) if e < head => {
                    f(e);
                    extra = &extra[1..];
                }
                (Some((at, head)), _) => {
                    f(head);
                    lists[at] = &lists[at][1..];
                }
                (None, Some(_)) => {
                    extra.iter().for_each(|&route| f(route));
                    return;
                }
                (None, None) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Condition;

    /// The requirement of a condition, written `name = constant`, `name present` or `none`;
    /// system property reads are written with `$` and their first key.
    fn requirement(condition: &str) -> String {
        let condition = Condition::compile(condition).expect("compiles");
        let name = |lookup: &Lookup| match lookup {
            Lookup::App(key) => key.name().to_owned(),
            Lookup::Sys { keys, .. } => format!("${}", keys[0].name()),
        };
        match Requirement::of(condition.code()) {
            Some(Requirement::Equals(lookup, constant)) => format!("{} = {constant}", name(lookup)),
            Some(Requirement::Present(lookup)) => format!("{} present", name(lookup)),
            None => "none".to_owned(),
        }
    }

    #[test]
    fn a_property_equal_to_a_string_constant_requires_that_value() {
        assert_eq!(requirement("level = 'high'"), "level = high");
        assert_eq!(requirement("'high' = level"), "level = high");
        assert_eq!(
            requirement("$connectionDeviceId = 'dev-17'"),
            "$connectionDeviceId = dev-17"
        );
        assert_eq!(requirement("{$outputName} = 'o1'"), "$outputName = o1");
        // Names keep their spelling: the lookup, not the index, ignores case.
        assert_eq!(requirement("LEVEL = 'High'"), "LEVEL = High");
    }

    #[test]
    fn a_conjunction_requires_what_a_conjunct_requires_preferring_equality() {
        assert_eq!(
            requirement("as_number(t) > 3 AND level = 'high'"),
            "level = high"
        );
        assert_eq!(requirement("level = 'a' AND site = 'b'"), "level = a");
        assert_eq!(
            requirement("(x <> 'a' AND is_defined(y)) AND $body.n > 1"),
            "x present"
        );
        assert_eq!(requirement("$body.n > 1 AND site = 'b'"), "site = b");
    }

    #[test]
    fn comparisons_and_tests_of_a_property_require_it_present() {
        assert_eq!(requirement("level <> 'high'"), "level present");
        assert_eq!(requirement("level > 'a'"), "level present");
        assert_eq!(requirement("as_number(t) > 30"), "t present");
        assert_eq!(requirement("length(t) + 1 = 3"), "t present");
        assert_eq!(requirement("is_defined(level)"), "level present");
        assert_eq!(requirement("is_string(level)"), "level present");
        assert_eq!(requirement("is_number(as_number(t))"), "t present");
        assert_eq!(requirement("contains(lower(level), 'x')"), "level present");
        assert_eq!(requirement("lower(level) = 'x'"), "level present");
        assert_eq!(requirement("concat('a', level) = 'ax'"), "level present");
        assert_eq!(requirement("a < b"), "a present");
    }

    #[test]
    fn other_shapes_have_no_requirement() {
        for condition in [
            "true",
            "level = 'a' OR level = 'b'",
            "NOT (level = 'a')",
            "NOT (level <> 'a')",
            "(level ?? 'a') = 'a'",
            "is_defined(level ?? 'a')",
            "as_number(t ?? '5') > 3",
            "$body.x = 'a'",
            "$body.flag AND level = 'a'",
            "is_null(level)",
            "is_bool(level = 'a')",
            "(level = 'a') = false",
            "contains($body.s, 'x')",
            "'a' = 'a'",
            "undefined",
        ] {
            assert_eq!(requirement(condition), "none", "{condition}");
        }
    }

    /// The candidates for `message` of an index of `conditions` (route `i` is `conditions[i]`).
    fn candidates(conditions: &[String], message: &crate::Message) -> Vec<usize> {
        let compiled: Vec<Condition> = conditions
            .iter()
            .map(|c| Condition::compile(c).expect("compiles"))
            .collect();
        let mut index = ConditionIndex::default();
        for (route, condition) in compiled.iter().enumerate() {
            index.insert(route, condition.code());
        }
        index.finish();
        let mut out = Vec::new();
        index.for_each_candidate(&Cx::new(message), |route| out.push(route));
        out
    }

    #[test]
    fn a_message_meets_the_routes_of_its_value_its_properties_and_the_rest_in_order() {
        let mut conditions: Vec<String> = (0..6).map(|i| format!("level = 'v{i}'")).collect();
        conditions.insert(3, "true".to_owned());
        conditions.push("level <> 'v2'".to_owned());
        conditions.push("site = 'x' OR level = 'v2'".to_owned());
        let mut message = crate::Message::default();
        assert_eq!(candidates(&conditions, &message), [3, 8]);
        message.properties.insert("LEVEL", "v2");
        assert_eq!(candidates(&conditions, &message), [2, 3, 7, 8]);
        message.properties.insert("level", "V2");
        assert_eq!(candidates(&conditions, &message), [3, 7, 8]);
    }

    #[test]
    fn a_property_that_few_routes_require_is_not_indexed() {
        let conditions: Vec<String> = (0..INDEX_FROM - 1)
            .map(|i| format!("level = 'v{i}'"))
            .chain(["true".to_owned()])
            .collect();
        let all: Vec<usize> = (0..INDEX_FROM).collect();
        assert_eq!(candidates(&conditions, &crate::Message::default()), all);
    }

    fn merged(lists: &[Vec<usize>]) -> Vec<usize> {
        let mut sorted = SortedLists::default();
        for list in lists {
            sorted.push(list);
        }
        let mut out = Vec::new();
        sorted.merge(|route| out.push(route));
        out
    }

    #[test]
    fn sorted_lists_merge_in_increasing_order_beyond_the_inline_ones() {
        assert!(merged(&[]).is_empty());
        assert_eq!(merged(&[vec![], vec![2, 5]]), [2, 5]);
        assert_eq!(
            merged(&[vec![1, 4, 9], vec![2], vec![3, 10]]),
            [1, 2, 3, 4, 9, 10]
        );
        let many: Vec<Vec<usize>> = (0..20).map(|k| vec![k, k + 20, k + 40]).collect();
        assert_eq!(merged(&many), (0..60).collect::<Vec<_>>());
    }
}
