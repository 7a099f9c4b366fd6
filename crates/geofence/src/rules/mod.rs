//! Rules a fleet asks for beyond the built-in events: a dwell in a fence,
//! idling, overspeed, and any built-in event narrowed to some devices,
//! fences and a schedule; each named, debounced, and evaluated per device
//! from state that survives restarts and Kafka rebalances.
//!
//! Pure: [`Rules::evaluate`] reads a fix taken, what the geofence and trip
//! rules made of it, and the device's [`RuleState`], and appends the
//! events that fire. The same code runs live (the geofence stage) and over
//! history (`otstream rules test`), so a back-test says what the live
//! pipeline would have said.
//!
//! The rules (each a `[[rules]]` table of the rules file; README, "Rules"):
//! - `dwell`: inside one of `fences` (any fence when none are named) for
//!   `min_s`, counted from the first fix inside (the enter, or the first
//!   fix evaluated under the rule): fires at the first fix inside at least
//!   `min_s` after it, once per visit. A fix is what says the device is
//!   still there: a visit that ends one second short fires nothing.
//! - `idle`: in a stop (the trip rules' open stop) for `min_s` since its
//!   arrival: fires at the first fix at least `min_s` after the arrival,
//!   once per stop.
//! - `overspeed`: above `max_kmh` for `min_s`. The speed is the fix's
//!   `vel` where the device sent one, else the speed from the previous fix
//!   taken. Fires at the first fix at least `min_s` after the first fix
//!   above the limit, once per run above it.
//! - a built-in kind (`enter`, `leave`, `trip_started`, `trip_ended`,
//!   `stop_started`, `stop_ended`, `silent`, `back`, `battery_low`): each
//!   such server-derived event of a matching device, and with `fences`,
//!   only those whose fence is named.
//!
//! `devices` and `groups` (of `[access]`) say who (everyone when both are
//! empty); `fences` where (operator fences by name or id, a device's own
//! regions by name) (for `idle` and `overspeed`, the device must be
//! inside one); `schedule` when, in its own time zone: `from` belongs to
//! the period it opens and `to` to the one after it, a period that runs
//! past midnight belongs to the day it opens, and outside it a rule
//! counts nothing (a dwell that began before the period opened counts from
//! the first fix inside the period). `debounce_s`: a rule fires again for a
//! device (and fence) only that long after it last fired.
//!
//! A fired rule is an [`Event`] of the rule's kind whose `rule` names it
//! and whose id is the built-in id with `#name` appended: two rules of one
//! kind never collide, and a replay gives the same ids.

use std::collections::BTreeMap;
use std::path::Path;

use otstream_model::{Event, EventKind, Position, Text};
use serde::{Deserialize, Serialize};

use crate::fence::{FenceSet, fence_key};

pub mod near;
pub use near::NearState;

/// Most rules in a file: each is looked at for every fix.
pub const MAX_RULES: usize = 256;

/// Most conditions a device's rule state holds at once (a rule and a
/// fence each); past it the oldest is forgotten, and counted.
pub const MAX_ENTRIES: usize = 64;

/// Why a rules file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The file could not be read.
    #[error("cannot read rules file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or a table with a field no rule has.
    #[error("rules file: {0}")]
    Toml(String),
    /// One rule is wrong: its name and what is wrong.
    #[error("rule {rule:?}: {problem}")]
    Rule {
        /// The rule's name.
        rule: String,
        /// What is wrong with it.
        problem: String,
    },
    /// More rules than [`MAX_RULES`].
    #[error("rules file: {0} rules, at most {MAX_RULES}")]
    TooMany(usize),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rules: Vec<Spec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: String,
    kind: String,
    min_s: Option<u64>,
    max_kmh: Option<f64>,
    within_m: Option<f64>,
    leave_m: Option<f64>,
    fresh_s: Option<u64>,
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    fences: Vec<String>,
    schedule: Option<ScheduleSpec>,
    #[serde(default)]
    debounce_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleSpec {
    #[serde(default)]
    days: Vec<String>,
    from: String,
    to: String,
    tz: String,
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Dwell { min_s: i64 },
    Idle { min_s: i64 },
    Overspeed { max_kmh: f64, min_s: i64 },
    Proximity(near::Distances),
    Builtin(EventKind),
}

/// A device pattern: `user/device` or `user/*`.
#[derive(Debug, Clone, PartialEq)]
struct Who {
    user: Text,
    device: Option<Text>,
}

/// When a rule is active: days (of the period's opening) and a daily
/// period in a time zone.
#[derive(Debug, Clone)]
struct Schedule {
    /// Bit `d` for weekday `d`, Monday 0.
    days: u8,
    /// Period start and end, seconds of the local day; `to <= from` runs
    /// past midnight.
    from: i32,
    to: i32,
    tz: jiff::tz::TimeZone,
}

impl Schedule {
    /// Whether `tst` (UNIX s) falls in a period.
    fn active(&self, tst: i64) -> bool {
        let Ok(at) = jiff::Timestamp::from_second(tst) else {
            return false;
        };
        let local = tst + i64::from(self.tz.to_offset(at).seconds());
        let day = local.div_euclid(86_400);
        let sod = i32::try_from(local.rem_euclid(86_400)).unwrap_or(0);
        // 1970-01-01, day 0, was a Thursday (3 counting from Monday).
        let weekday = |d: i64| 1u8 << (d + 3).rem_euclid(7);
        if self.from < self.to {
            self.days & weekday(day) != 0 && (self.from..self.to).contains(&sod)
        } else {
            (self.days & weekday(day) != 0 && sod >= self.from)
                || (self.days & weekday(day - 1) != 0 && sod < self.to)
        }
    }
}

/// One rule, checked and bound to the fences in use.
#[derive(Debug, Clone)]
struct Rule {
    name: Text,
    /// Stable hash of the name: what device state remembers.
    id: u64,
    kind: Kind,
    who: Vec<Who>,
    fences: Vec<Text>,
    /// The keys of the fences named, in the fences in use.
    keys: Vec<u64>,
    /// The names of the fences named by id: what events call them.
    bound_names: Vec<Text>,
    schedule: Option<Schedule>,
    debounce_s: i64,
}

impl Rule {
    fn applies(&self, user: &str, device: &str) -> bool {
        self.who.is_empty()
            || self
                .who
                .iter()
                .any(|w| w.user == user && w.device.as_deref().is_none_or(|d| d == device))
    }

    fn active(&self, tst: i64) -> bool {
        self.schedule.as_ref().is_none_or(|s| s.active(tst))
    }

    /// Whether the fence named `name` (an event's fence) is one of the rule's.
    fn names(&self, name: Option<&Text>) -> bool {
        self.fences.is_empty()
            || name.is_some_and(|n| self.fences.contains(n) || self.bound_names.contains(n))
    }

    /// Whether the fence with key `k` is one the rule names: an operator
    /// fence bound by name or id, or a device's own region by its name.
    fn counts(&self, k: u64, fence_name: &dyn Fn(u64) -> Option<Text>) -> bool {
        self.fences.is_empty()
            || self.keys.contains(&k)
            || fence_name(k).is_some_and(|n| self.fences.contains(&n))
    }

    /// Whether the device, inside `inside`, is where the rule looks.
    fn inside(&self, inside: &[u64], fence_name: &dyn Fn(u64) -> Option<Text>) -> bool {
        self.fences.is_empty() || inside.iter().any(|k| self.counts(*k, fence_name))
    }
}

/// A rule set: checked, bound to fences, ready to evaluate.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

/// What the other rules made of a fix, for the rules to read.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// The fix, taken and newer than the device's last.
    pub fix: &'a Position,
    /// The fences the device is inside after it (keys).
    pub inside: &'a [u64],
    /// The arrival of the stop the device is in, if it is in one.
    pub stop_since: Option<i64>,
    /// The previous fix taken (time, latitude, longitude), for a speed
    /// where the fix has none.
    pub prev: Option<(i64, f64, f64)>,
}

impl Rules {
    /// No rules.
    pub fn none() -> Self {
        Rules::default()
    }

    /// Reads and checks the rules file at `path`; `groups` are `[access]`'s.
    pub fn load(path: &Path, groups: &BTreeMap<String, Vec<String>>) -> Result<Self, RuleError> {
        let text = std::fs::read_to_string(path).map_err(|source| RuleError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, groups)
    }

    /// Checks a rules file's text; `groups` are `[access]`'s.
    pub fn parse(text: &str, groups: &BTreeMap<String, Vec<String>>) -> Result<Self, RuleError> {
        let file: File = toml::from_str(text).map_err(|e| RuleError::Toml(e.to_string()))?;
        if file.rules.len() > MAX_RULES {
            return Err(RuleError::TooMany(file.rules.len()));
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(file.rules.len());
        for spec in file.rules {
            let rule = Self::check(spec, groups)?;
            if rules.iter().any(|r| r.name == rule.name) {
                return Err(RuleError::Rule {
                    rule: rule.name.to_string(),
                    problem: "a second rule has this name: names are what event ids are made of"
                        .into(),
                });
            }
            rules.push(rule);
        }
        Ok(Rules { rules })
    }

    fn check(spec: Spec, groups: &BTreeMap<String, Vec<String>>) -> Result<Rule, RuleError> {
        let name = spec.name.clone();
        let bad = |problem: String| RuleError::Rule {
            rule: name.clone(),
            problem,
        };
        if spec.name.trim().is_empty() || spec.name.len() > 64 || spec.name.contains('#') {
            return Err(bad("a name is 1 to 64 characters, without '#'".into()));
        }
        let min_s = |field: &str| -> Result<i64, RuleError> {
            let s = spec
                .min_s
                .ok_or_else(|| bad(format!("{field} needs min_s (seconds)")))?;
            i64::try_from(s).map_err(|_| bad("min_s is too large".into()))
        };
        let kind = match spec.kind.as_str() {
            "dwell" => Kind::Dwell {
                min_s: min_s("dwell")?,
            },
            "idle" => Kind::Idle {
                min_s: min_s("idle")?,
            },
            "overspeed" => {
                let max_kmh = spec
                    .max_kmh
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| bad("overspeed needs max_kmh above 0".into()))?;
                Kind::Overspeed {
                    max_kmh,
                    min_s: i64::try_from(spec.min_s.unwrap_or(0))
                        .map_err(|_| bad("min_s is too large".into()))?,
                }
            }
            "proximity" => {
                let within_m = spec
                    .within_m
                    .filter(|v| v.is_finite() && *v > 0.0 && *v <= near::MAX_WITHIN_M)
                    .ok_or_else(|| {
                        bad(format!(
                            "proximity needs within_m above 0, at most {} (metres)",
                            near::MAX_WITHIN_M
                        ))
                    })?;
                // Hysteresis: a pair near stays near until this far apart,
                // so that two devices at the edge do not flap.
                let leave_m = spec.leave_m.unwrap_or(within_m * 1.2);
                if !leave_m.is_finite() || leave_m < within_m || leave_m > near::MAX_WITHIN_M {
                    return Err(bad(format!(
                        "leave_m is at least within_m, at most {}",
                        near::MAX_WITHIN_M
                    )));
                }
                if !spec.fences.is_empty() {
                    return Err(bad("proximity compares devices anywhere: no fences".into()));
                }
                let fresh_s = i64::try_from(spec.fresh_s.unwrap_or(300))
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| bad("fresh_s is 1 second or more".into()))?;
                Kind::Proximity(near::Distances {
                    within_m,
                    leave_m,
                    fresh_s,
                })
            }
            other => match EventKind::named(other) {
                Some(k) => Kind::Builtin(k),
                None => {
                    let builtin: Vec<&str> = EventKind::ALL
                        .iter()
                        .map(|k| k.as_str())
                        .filter(|k| !["dwell", "idle", "overspeed", "proximity"].contains(k))
                        .collect();
                    return Err(bad(format!(
                        "unknown kind {other:?}: dwell, idle, overspeed, proximity, or a built-in kind ({})",
                        builtin.join(", ")
                    )));
                }
            },
        };
        if spec.max_kmh.is_some() && !matches!(kind, Kind::Overspeed { .. }) {
            return Err(bad("max_kmh is for overspeed only".into()));
        }
        let is_near = matches!(kind, Kind::Proximity(_));
        if (spec.within_m.is_some() || spec.leave_m.is_some() || spec.fresh_s.is_some()) && !is_near
        {
            return Err(bad(
                "within_m, leave_m and fresh_s are for proximity only".into()
            ));
        }
        if spec.min_s.is_some() && matches!(kind, Kind::Builtin(_) | Kind::Proximity(_)) {
            return Err(bad(format!("min_s does not apply to {}", spec.kind)));
        }
        let mut who = Vec::new();
        let pattern = |p: &str| -> Result<Who, RuleError> {
            match p.split_once('/') {
                Some((u, d)) if !u.is_empty() && !d.is_empty() && !d.contains('/') => Ok(Who {
                    user: u.into(),
                    device: (d != "*").then(|| d.into()),
                }),
                _ => Err(bad(format!("{p:?} is not user/device or user/*"))),
            }
        };
        for d in &spec.devices {
            who.push(pattern(d)?);
        }
        for g in &spec.groups {
            let members = groups.get(g).ok_or_else(|| {
                bad(format!(
                    "names the group {g:?}, which access.groups does not define"
                ))
            })?;
            for m in members {
                who.push(pattern(m)?);
            }
        }
        let schedule = spec
            .schedule
            .map(|s| schedule(&s).map_err(|problem| bad(format!("schedule: {problem}"))))
            .transpose()?;
        Ok(Rule {
            id: fence_key(&spec.name),
            name: Text::from(spec.name),
            kind,
            who,
            fences: spec.fences.into_iter().map(Text::from).collect(),
            keys: Vec::new(),
            bound_names: Vec::new(),
            schedule,
            debounce_s: i64::try_from(spec.debounce_s)
                .map_err(|_| bad("debounce_s is too large".into()))?,
        })
    }

    /// Binds the fence names to the fences in use (by name or id); returns
    /// the names no fence has, per rule, to be said.
    pub fn bind(&mut self, fences: &FenceSet) -> Vec<(Text, Text)> {
        let mut missing = Vec::new();
        for r in &mut self.rules {
            let named = || {
                fences
                    .fences()
                    .iter()
                    .filter(|f| r.fences.contains(&f.name) || r.fences.contains(&f.id))
            };
            r.keys = named().map(|f| f.key).collect();
            r.bound_names = named().map(|f| f.name.clone()).collect();
            for n in &r.fences {
                if !fences.fences().iter().any(|f| f.name == *n || f.id == *n) {
                    missing.push((r.name.clone(), n.clone()));
                }
            }
        }
        missing
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules' names, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// The kind of the rule named `name`, as the rules file spells it.
    pub fn kind_of(&self, name: &str) -> Option<&'static str> {
        let r = self.rules.iter().find(|r| r.name == name)?;
        Some(match r.kind {
            Kind::Dwell { .. } => EventKind::Dwell.as_str(),
            Kind::Idle { .. } => EventKind::Idle.as_str(),
            Kind::Overspeed { .. } => EventKind::Overspeed.as_str(),
            Kind::Proximity(_) => EventKind::Proximity.as_str(),
            Kind::Builtin(k) => k.as_str(),
        })
    }

    /// The events a fix taken fires, appended to `events`, which holds the
    /// built-in events the fix caused (the built-in rules read those).
    /// `fence_name` names a fence the device is inside by its key.
    pub fn evaluate(
        &self,
        state: &mut RuleState,
        seen: Seen<'_>,
        fence_name: &dyn Fn(u64) -> Option<Text>,
        events: &mut Vec<Event>,
    ) {
        if self.rules.is_empty() {
            if state.0.is_some() {
                *state = RuleState::default();
            }
            return;
        }
        let p = seen.fix;
        let speed = speed_kmh(p, seen.prev);
        let builtin = events.len();
        for rule in &self.rules {
            if !rule.applies(&p.meta.user, &p.meta.device) {
                continue;
            }
            // Each condition is looked at before the schedule (a time zone
            // lookup), and memory is made only for a condition that holds:
            // most fixes of most devices hold none.
            match rule.kind {
                // Compares devices: the proximity stage's, from the fixes
                // `near_rules` sends it.
                Kind::Proximity(_) => {}
                Kind::Builtin(kind) => {
                    for i in 0..builtin {
                        let e = &events[i];
                        if e.kind == kind && rule.names(e.fence.as_ref()) && rule.active(e.tst) {
                            if let Some(fired) = state.held().fire_once(rule, e) {
                                events.push(fired);
                            }
                        }
                    }
                }
                Kind::Dwell { min_s } => {
                    let counts = |k: &u64| rule.counts(*k, fence_name);
                    if !seen.inside.iter().any(counts) || !rule.active(p.tst) {
                        state.release(rule.id, |_| true);
                        continue;
                    }
                    state.release(rule.id, |f| !seen.inside.contains(&f));
                    for &k in seen.inside.iter().filter(|k| counts(k)) {
                        if let Some(since) = state.held().holds(rule, k, None, p.tst, min_s) {
                            let fence = fence_name(k);
                            events.push(fired(rule, EventKind::Dwell, p, fence, since, None));
                        }
                    }
                }
                Kind::Idle { min_s } => match seen.stop_since {
                    Some(arrival) if rule.inside(seen.inside, fence_name) && rule.active(p.tst) => {
                        let held = state.held();
                        if let Some(since) = held.holds(rule, 0, Some(arrival), p.tst, min_s) {
                            events.push(fired(rule, EventKind::Idle, p, None, since, None));
                        }
                    }
                    _ => state.release(rule.id, |_| true),
                },
                Kind::Overspeed { max_kmh, min_s } => match speed {
                    Some(v)
                        if v > max_kmh
                            && rule.inside(seen.inside, fence_name)
                            && rule.active(p.tst) =>
                    {
                        if let Some(since) = state.held().holds(rule, 0, None, p.tst, min_s) {
                            events.push(fired(rule, EventKind::Overspeed, p, None, since, Some(v)));
                        }
                    }
                    _ => state.release(rule.id, |_| true),
                },
            }
        }
        state.forget(&self.rules, p.tst);
    }

    /// The built-in rules over events not caused by a fix (`silent`,
    /// noticed by the clock), appended to `events`.
    pub fn on_events(&self, state: &mut RuleState, events: &mut Vec<Event>) {
        let n = events.len();
        let Some(now) = events.iter().map(|e| e.tst).max() else {
            return;
        };
        for rule in &self.rules {
            let Kind::Builtin(kind) = rule.kind else {
                continue;
            };
            for i in 0..n {
                let e = &events[i];
                if e.kind == kind
                    && rule.applies(&e.meta.user, &e.meta.device)
                    && rule.names(e.fence.as_ref())
                    && rule.active(e.tst)
                {
                    if let Some(fired) = state.held().fire_once(rule, e) {
                        events.push(fired);
                    }
                }
            }
        }
        state.forget(&self.rules, now);
    }
}

/// The fix's speed, km/h: its `vel` where the device sent one (iOS sends
/// -1 for unknown), else from the previous fix taken.
fn speed_kmh(p: &Position, prev: Option<(i64, f64, f64)>) -> Option<f64> {
    if let Some(v) = p.vel.filter(|v| *v >= 0) {
        return Some(f64::from(v));
    }
    let (tst, lat, lon) = prev?;
    let dt = p.tst - tst;
    if dt <= 0 {
        return None;
    }
    let here = otstream_trips::Fix::new(p.tst, p.lat, p.lon);
    let d = here.distance_m(&otstream_trips::Fix::new(tst, lat, lon));
    Some(d / dt as f64 * 3.6)
}

/// The event a condition rule fires at fix `p`.
fn fired(
    rule: &Rule,
    kind: EventKind,
    p: &Position,
    fence: Option<Text>,
    since: i64,
    vel: Option<f64>,
) -> Event {
    Event {
        since: Some(since),
        speed: vel,
        ..Event::new(kind, p.meta.clone(), p.tst, (p.lat, p.lon), fence).for_rule(&rule.name)
    }
}

/// What the rules remember of a device: the conditions holding and when
/// each rule last fired. Boxed and dropped when empty: most devices hold
/// no condition most of the time, and pay a pointer, and store nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RuleState(Option<Box<Held>>);

impl RuleState {
    /// Whether nothing is remembered (and nothing is stored).
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Conditions and debounces remembered.
    pub fn entries(&self) -> usize {
        self.0.as_ref().map_or(0, |h| h.entries.len())
    }

    fn held(&mut self) -> &mut Held {
        self.0.get_or_insert_with(Box::default)
    }

    /// Ends the holds of `rule` at the fences `gone` says.
    fn release(&mut self, rule: u64, gone: impl Fn(u64) -> bool) {
        if let Some(held) = &mut self.0 {
            held.release_where(rule, gone);
        }
    }

    /// Forgets what no longer matters at `tst` ([`Held::forget`]), and
    /// the memory itself when nothing is left.
    fn forget(&mut self, rules: &[Rule], tst: i64) {
        if let Some(held) = &mut self.0 {
            held.forget(rules, tst);
            if held.entries.is_empty() {
                self.0 = None;
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Held {
    #[serde(rename = "e", default, skip_serializing_if = "Vec::is_empty")]
    entries: Vec<Entry>,
}

/// A rule's memory for a device (and a fence).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Entry {
    #[serde(rename = "r")]
    rule: u64,
    #[serde(rename = "f", default)]
    fence: u64,
    /// When its condition began holding, UNIX s; 0 when it does not hold.
    #[serde(rename = "s", default)]
    since: i64,
    /// Fired during this hold.
    #[serde(rename = "x", default)]
    fired: bool,
    /// When it last fired, UNIX s; 0 never (the debounce).
    #[serde(rename = "l", default)]
    last: i64,
}

impl Held {
    /// The memory of `rule` at `fence`, made if there is room. When the
    /// memory is full, the oldest debounce makes room; conditions that
    /// hold are never forgotten for a new one (that one is not counted,
    /// and `otstream_rule_entries_refused_total` says so).
    fn entry(&mut self, rule: u64, fence: u64) -> Option<&mut Entry> {
        let i = match self
            .entries
            .iter()
            .position(|e| e.rule == rule && e.fence == fence)
        {
            Some(i) => i,
            None => {
                if self.entries.len() >= MAX_ENTRIES {
                    let oldest = self
                        .entries
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| e.since == 0)
                        .min_by_key(|(_, e)| e.last)
                        .map(|(i, _)| i);
                    let Some(oldest) = oldest else {
                        metrics::counter!("otstream_rule_entries_refused_total").increment(1);
                        return None;
                    };
                    self.entries.swap_remove(oldest);
                }
                self.entries.push(Entry {
                    rule,
                    fence,
                    since: 0,
                    fired: false,
                    last: 0,
                });
                self.entries.len() - 1
            }
        };
        self.entries.get_mut(i)
    }

    /// The condition of `rule` (at `fence`) holds at `tst`, since `start`
    /// (a fixed start, as a stop's arrival) or since the first fix it held
    /// at: the time it began if it fires now.
    fn holds(
        &mut self,
        rule: &Rule,
        fence: u64,
        start: Option<i64>,
        tst: i64,
        min_s: i64,
    ) -> Option<i64> {
        let e = self.entry(rule.id, fence)?;
        // A fixed start (a stop's arrival) counts from when the schedule
        // let it: a stop that began before the period opened counts from
        // the period's first fix.
        let begin = match start {
            Some(s) if rule.active(s) => s,
            Some(s) => s.max(tst),
            None => tst,
        };
        if e.since == 0 {
            e.since = begin;
            e.fired = false;
        } else if start.is_some() && !e.fired && begin != e.since {
            // The trip rules estimated the arrival anew: the same stop.
            e.since = begin;
        }
        if e.fired || tst - e.since < min_s {
            return None;
        }
        // Fired for this hold either way: a debounce suppresses, it does
        // not postpone.
        e.fired = true;
        if e.last != 0 && tst - e.last < rule.debounce_s {
            return None;
        }
        e.last = tst;
        Some(e.since)
    }

    /// A built-in event `e` for `rule`, unless debounced.
    fn fire_once(&mut self, rule: &Rule, e: &Event) -> Option<Event> {
        let fence = e.fence.as_deref().map_or(0, fence_key);
        // Without room to remember it (every memory a holding condition),
        // the event still fires, undebounced.
        if let Some(entry) = self.entry(rule.id, fence) {
            if entry.last != 0 && e.tst - entry.last < rule.debounce_s {
                return None;
            }
            entry.last = e.tst;
        }
        Some(e.clone().for_rule(&rule.name))
    }

    fn release_where(&mut self, rule: u64, gone: impl Fn(u64) -> bool) {
        for e in &mut self.entries {
            if e.rule == rule && gone(e.fence) {
                e.since = 0;
                e.fired = false;
            }
        }
    }

    /// Drops what no longer matters at `tst`: conditions not holding whose
    /// debounce is over, and the memories of rules no longer in the set.
    fn forget(&mut self, rules: &[Rule], tst: i64) {
        self.entries.retain(|e| {
            rules
                .iter()
                .find(|r| r.id == e.rule)
                .is_some_and(|r| e.since != 0 || (e.last != 0 && tst - e.last < r.debounce_s))
        });
    }
}

/// A schedule's text, checked.
fn schedule(s: &ScheduleSpec) -> Result<Schedule, String> {
    const DAYS: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let mut days = 0u8;
    for d in &s.days {
        let lower = d.to_ascii_lowercase();
        let i = DAYS
            .iter()
            .position(|n| lower == *n || (lower.len() == 3 && n.starts_with(&lower)))
            .ok_or_else(|| format!("{d:?} is not a day (mon .. sun, or monday .. sunday)"))?;
        days |= 1 << i;
    }
    if s.days.is_empty() {
        days = 0x7f;
    }
    let time = |t: &str| -> Result<i32, String> {
        let (h, m) = t
            .split_once(':')
            .ok_or_else(|| format!("{t:?} is not HH:MM"))?;
        let (h, m): (i32, i32) = (
            h.parse().map_err(|_| format!("{t:?} is not HH:MM"))?,
            m.parse().map_err(|_| format!("{t:?} is not HH:MM"))?,
        );
        if !(0..=24).contains(&h) || !(0..60).contains(&m) || (h == 24 && m != 0) {
            return Err(format!("{t:?} is not a time of day"));
        }
        Ok(h * 3600 + m * 60)
    };
    let (from, to) = (time(&s.from)?, time(&s.to)? % 86_400);
    if from == 86_400 {
        return Err(format!(
            "from = {:?}: a period opens at 00:00 .. 23:59",
            s.from
        ));
    }
    let tz = jiff::tz::TimeZone::get(&s.tz)
        .map_err(|_| format!("{:?} is not a time zone (e.g. Europe/Berlin, UTC)", s.tz))?;
    Ok(Schedule { days, from, to, tz })
}

#[cfg(test)]
mod tests;
