use super::*;
use otstream_model::{Meta, Transport};

fn no_groups() -> BTreeMap<String, Vec<String>> {
    BTreeMap::new()
}

fn rules(text: &str) -> Rules {
    Rules::parse(text, &no_groups()).expect("rules")
}

fn refusal(text: &str) -> String {
    match Rules::parse(text, &no_groups()) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

fn fix(device: &str, tst: i64, vel: Option<i32>) -> Position {
    let meta = Meta {
        user: "acme".into(),
        device: device.into(),
        tid: None,
        received_at: tst * 1000,
        transport: Transport::Http,
        topic: None,
    };
    Position {
        vel,
        ..Position::at(meta, tst, 48.0, 11.0)
    }
}

const DEPOT: u64 = 7;

fn seen<'a>(
    p: &'a Position,
    inside: &'a [u64],
    stop_since: Option<i64>,
    prev: Option<(i64, f64, f64)>,
) -> Seen<'a> {
    Seen {
        fix: p,
        inside,
        stop_since,
        prev,
    }
}

fn name(k: u64) -> Option<Text> {
    (k == DEPOT).then(|| Text::from("Depot"))
}

/// A fix and what the other rules made of it: `(tst, vel, inside,
/// stop_since)`.
type Step<'a> = (i64, Option<i32>, &'a [u64], Option<i64>);

/// Runs `rules` over the fixes of one device, giving the ids of what fired.
fn run(rules: &Rules, fixes: &[Step<'_>]) -> Vec<String> {
    let mut state = RuleState::default();
    let mut out = Vec::new();
    for (tst, vel, inside, stop_since) in fixes {
        let p = fix("van1", *tst, *vel);
        let mut events = Vec::new();
        rules.evaluate(
            &mut state,
            seen(&p, inside, *stop_since, None),
            &name,
            &mut events,
        );
        out.extend(events.into_iter().map(|e| e.id));
    }
    out
}

#[test]
fn a_bad_rules_file_is_refused_naming_the_rule_and_the_problem() {
    assert_eq!(
        refusal("[[rules]]\nname = \"d\"\nkind = \"dwell\"\n"),
        "rule \"d\": dwell needs min_s (seconds)"
    );
    assert_eq!(
        refusal("[[rules]]\nname = \"x\"\nkind = \"teleport\"\n"),
        "rule \"x\": unknown kind \"teleport\": dwell, idle, overspeed, proximity, or a built-in kind (enter, leave, trip_started, trip_ended, stop_started, stop_ended, silent, back, battery_low)"
    );
    assert_eq!(
        refusal("[[rules]]\nname = \"s\"\nkind = \"overspeed\"\nmax_kmh = 0\n"),
        "rule \"s\": overspeed needs max_kmh above 0"
    );
    assert_eq!(
        refusal(
            "[[rules]]\nname = \"a\"\nkind = \"enter\"\n[[rules]]\nname = \"a\"\nkind = \"leave\"\n"
        ),
        "rule \"a\": a second rule has this name: names are what event ids are made of"
    );
    assert_eq!(
        refusal(
            "[[rules]]\nname = \"w\"\nkind = \"enter\"\nschedule = { from = \"08:00\", to = \"18:00\", tz = \"Mars/Olympus\" }\n"
        ),
        "rule \"w\": schedule: \"Mars/Olympus\" is not a time zone (e.g. Europe/Berlin, UTC)"
    );
    assert_eq!(
        refusal("[[rules]]\nname = \"g\"\nkind = \"enter\"\ngroups = [\"vans\"]\n"),
        "rule \"g\": names the group \"vans\", which access.groups does not define"
    );
    assert_eq!(
        refusal("[[rules]]\nname = \"p\"\nkind = \"proximity\"\n"),
        "rule \"p\": proximity needs within_m above 0, at most 100000 (metres)"
    );
    assert_eq!(
        refusal("[[rules]]\nname = \"p\"\nkind = \"proximity\"\nwithin_m = 100\nleave_m = 50\n"),
        "rule \"p\": leave_m is at least within_m, at most 100000"
    );
    assert_eq!(
        refusal(
            "[[rules]]\nname = \"p\"\nkind = \"proximity\"\nwithin_m = 100\nfences = [\"Depot\"]\n"
        ),
        "rule \"p\": proximity compares devices anywhere: no fences"
    );
    assert_eq!(
        refusal("[[rules]]\nname = \"d\"\nkind = \"dwell\"\nmin_s = 5\nwithin_m = 100\n"),
        "rule \"d\": within_m, leave_m and fresh_s are for proximity only"
    );
    assert!(
        refusal("[[rules]]\nname = \"t\"\nkind = \"enter\"\nmin_secs = 3\n")
            .starts_with("rules file: ")
    );
    let many: String = (0..=MAX_RULES)
        .map(|i| format!("[[rules]]\nname = \"r{i}\"\nkind = \"enter\"\n"))
        .collect();
    assert_eq!(refusal(&many), "rules file: 257 rules, at most 256");
}

#[test]
fn a_dwell_fires_once_a_visit_and_not_one_second_short() {
    let r = rules(
        "[[rules]]\nname = \"depot-20\"\nkind = \"dwell\"\nmin_s = 1200\nfences = [\"Depot\"]\n",
    );
    let mut r = r;
    r.bind(&FenceSet::new(vec![]));
    // Bound by name to no fence: the key is named by the test instead.
    r.rules[0].keys = vec![DEPOT];
    let inside: &[u64] = &[DEPOT];
    let out: &[u64] = &[];
    let fired = run(
        &r,
        &[
            // First visit: 1,199 s, then out.
            (1_000, None, inside, None),
            (1_600, None, inside, None),
            (2_199, None, inside, None),
            (2_260, None, out, None),
            // Second: in at 3,000; 4,200 is 1,200 s later.
            (3_000, None, inside, None),
            (4_199, None, inside, None),
            (4_200, None, inside, None),
            (5_000, None, inside, None),
        ],
    );
    assert_eq!(fired, ["dwell:acme/van1:4200:Depot#depot-20"]);
}

#[test]
fn idle_counts_from_the_stops_arrival_once_per_stop() {
    let r = rules("[[rules]]\nname = \"idle-10\"\nkind = \"idle\"\nmin_s = 600\n");
    let fired = run(
        &r,
        &[
            (1_000, None, &[], None),
            (1_500, None, &[], Some(1_100)),
            (1_699, None, &[], Some(1_100)),
            (1_700, None, &[], Some(1_100)),
            (2_500, None, &[], Some(1_100)),
            // A trip, then another stop.
            (3_000, None, &[], None),
            (4_000, None, &[], Some(3_900)),
            (4_500, None, &[], Some(3_900)),
        ],
    );
    assert_eq!(
        fired,
        ["idle:acme/van1:1700#idle-10", "idle:acme/van1:4500#idle-10"]
    );
}

#[test]
fn overspeed_needs_its_seconds_above_the_limit_and_reads_vel_or_the_distance() {
    let r = rules("[[rules]]\nname = \"fast\"\nkind = \"overspeed\"\nmax_kmh = 90\nmin_s = 30\n");
    let fired = run(
        &r,
        &[
            (1_000, Some(95), &[], None),
            (1_020, Some(120), &[], None),
            // Under: the run restarts.
            (1_040, Some(90), &[], None),
            (1_050, Some(100), &[], None),
            (1_079, Some(100), &[], None),
            (1_080, Some(100), &[], None),
            (1_090, Some(130), &[], None),
        ],
    );
    assert_eq!(fired, ["overspeed:acme/van1:1080#fast"]);

    // No vel: from the distance. 0.01° of latitude is 1,112 m; in 30 s
    // that is 133 km/h.
    let r = rules("[[rules]]\nname = \"fast\"\nkind = \"overspeed\"\nmax_kmh = 130\n");
    let mut state = RuleState::default();
    let mut ids = Vec::new();
    let mut prev = None;
    for (tst, lat) in [(0, 48.0), (30, 48.01), (60, 48.0195)] {
        let mut p = fix("van1", tst, None);
        p.lat = lat;
        let mut events = Vec::new();
        r.evaluate(&mut state, seen(&p, &[], None, prev), &name, &mut events);
        ids.extend(
            events
                .into_iter()
                .map(|e| (e.id, e.speed.map(|v| v.round()))),
        );
        prev = Some((p.tst, p.lat, p.lon));
    }
    assert_eq!(
        ids,
        [("overspeed:acme/van1:30#fast".to_owned(), Some(133.0))]
    );
}

fn at(rfc3339: &str) -> i64 {
    rfc3339
        .parse::<jiff::Timestamp>()
        .expect("time")
        .as_second()
}

#[test]
fn a_schedule_runs_past_midnight_in_its_zone_and_its_boundaries_open_periods() {
    let r = rules(
        "[[rules]]\nname = \"night\"\nkind = \"enter\"\nschedule = { days = [\"fri\"], from = \"22:00\", to = \"06:00\", tz = \"Europe/Berlin\" }\n",
    );
    let s = r.rules[0].schedule.as_ref().expect("schedule");
    // Friday 2026-12-04, CET (UTC+1).
    assert!(!s.active(at("2026-12-04T20:59:59Z")));
    assert!(s.active(at("2026-12-04T21:00:00Z")));
    assert!(s.active(at("2026-12-05T04:59:59Z")));
    assert!(!s.active(at("2026-12-05T05:00:00Z")));
    // Saturday night is not Friday's.
    assert!(!s.active(at("2026-12-05T21:00:00Z")));
    // Thursday night neither.
    assert!(!s.active(at("2026-12-03T21:00:00Z")));

    // Over the change to summer time (Sunday 2026-03-29, 02:00 CET ->
    // 03:00 CEST): 08:00 is 07:00Z on Saturday and 06:00Z on Sunday.
    let r = rules(
        "[[rules]]\nname = \"day\"\nkind = \"enter\"\nschedule = { days = [\"sat\", \"sun\"], from = \"08:00\", to = \"18:00\", tz = \"Europe/Berlin\" }\n",
    );
    let s = r.rules[0].schedule.as_ref().expect("schedule");
    assert!(!s.active(at("2026-03-28T06:59:59Z")));
    assert!(s.active(at("2026-03-28T07:00:00Z")));
    assert!(!s.active(at("2026-03-29T05:59:59Z")));
    assert!(s.active(at("2026-03-29T06:00:00Z")));
    assert!(s.active(at("2026-03-29T15:59:59Z")));
    assert!(!s.active(at("2026-03-29T16:00:00Z")));
}

fn enter(device: &str, tst: i64, fence: &str) -> Event {
    let p = fix(device, tst, None);
    Event::new(
        EventKind::Enter,
        p.meta,
        tst,
        (p.lat, p.lon),
        Some(fence.into()),
    )
}

#[test]
fn built_in_kinds_narrowed_to_devices_and_fences_with_ids_of_their_own_and_a_debounce() {
    let r = rules(
        "[[rules]]\nname = \"depot-in\"\nkind = \"enter\"\nfences = [\"Depot\"]\ndevices = [\"acme/van1\"]\ndebounce_s = 600\n\
         [[rules]]\nname = \"any-in\"\nkind = \"enter\"\n",
    );
    let mut state = RuleState::default();
    let mut ids = Vec::new();
    for (device, tst, fence) in [
        ("van1", 1_000, "Depot"),
        ("van1", 1_300, "Depot"),
        ("van1", 1_600, "Depot"),
        ("van1", 1_700, "Yard"),
        ("van2", 1_800, "Depot"),
    ] {
        let p = fix(device, tst, None);
        let mut events = vec![enter(device, tst, fence)];
        r.evaluate(&mut state, seen(&p, &[], None, None), &name, &mut events);
        ids.extend(events.into_iter().skip(1).map(|e| e.id));
    }
    assert_eq!(
        ids,
        [
            "enter:acme/van1:1000:Depot#depot-in",
            "enter:acme/van1:1000:Depot#any-in",
            "enter:acme/van1:1300:Depot#any-in",
            "enter:acme/van1:1600:Depot#depot-in",
            "enter:acme/van1:1600:Depot#any-in",
            "enter:acme/van1:1700:Yard#any-in",
            "enter:acme/van2:1800:Depot#any-in",
        ]
    );
}

/// 70 regions at once, one dwell rule over any fence: 64 holds are kept
/// (the rest refused, not counted), each fires once, none is forgotten for
/// a newer one, so nothing fires twice.
#[test]
fn a_devices_rule_memory_is_bounded_and_keeps_what_it_holds() {
    let r = rules("[[rules]]\nname = \"d\"\nkind = \"dwell\"\nmin_s = 60\n");
    let inside: Vec<u64> = (1..=70).collect();
    let mut state = RuleState::default();
    let mut fired = Vec::new();
    for tst in [1_000, 1_060, 1_120, 1_180] {
        let p = fix("van1", tst, None);
        let seen = seen(&p, &inside, None, None);
        let mut events = Vec::new();
        r.evaluate(&mut state, seen, &|_| None, &mut events);
        fired.push(events.len());
        assert_eq!(state.entries(), MAX_ENTRIES);
    }
    assert_eq!(fired, [0, MAX_ENTRIES, 0, 0]);
}

#[test]
fn fences_are_named_by_name_or_id_for_every_kind() {
    let mut r = rules(
        "[[rules]]\nname = \"in\"\nkind = \"enter\"\nfences = [\"depot\"]\n\
         [[rules]]\nname = \"stay\"\nkind = \"dwell\"\nmin_s = 60\nfences = [\"depot\"]\n",
    );
    let set = FenceSet::new(vec![crate::Fence::new(
        "depot",
        "Main depot",
        crate::Shape::Circle {
            lat: 48.0,
            lon: 11.0,
            radius_m: 100.0,
        },
    )]);
    assert_eq!(r.bind(&set), Vec::<(Text, Text)>::new());
    let key = set.fences()[0].key;
    let named = |k: u64| (k == key).then(|| Text::from("Main depot"));
    let mut state = RuleState::default();
    let mut ids = Vec::new();
    for tst in [1_000, 1_060] {
        let p = fix("van1", tst, None);
        let mut events = if tst == 1_000 {
            vec![enter("van1", tst, "Main depot")]
        } else {
            Vec::new()
        };
        let n = events.len();
        r.evaluate(
            &mut state,
            seen(&p, &[key], None, None),
            &named,
            &mut events,
        );
        ids.extend(events.into_iter().skip(n).map(|e| e.id));
    }
    assert_eq!(
        ids,
        [
            "enter:acme/van1:1000:Main depot#in",
            "dwell:acme/van1:1060:Main depot#stay"
        ]
    );
}

#[test]
fn what_a_removed_rule_remembered_is_forgotten_at_the_next_fix() {
    let a = rules("[[rules]]\nname = \"fast\"\nkind = \"overspeed\"\nmax_kmh = 90\nmin_s = 30\n");
    let b = rules("[[rules]]\nname = \"slow\"\nkind = \"overspeed\"\nmax_kmh = 200\n");
    let mut state = RuleState::default();
    for (set, tst) in [(&a, 1_000), (&b, 1_010)] {
        let p = fix("van1", tst, Some(100));
        set.evaluate(
            &mut state,
            seen(&p, &[], None, None),
            &name,
            &mut Vec::new(),
        );
    }
    assert!(state.is_empty());
}

#[test]
fn idle_fires_once_a_stop_whose_arrival_is_estimated_again() {
    let r = rules("[[rules]]\nname = \"idle-10\"\nkind = \"idle\"\nmin_s = 600\n");
    let fired = run(
        &r,
        &[
            (1_500, None, &[], Some(1_100)),
            // Estimated earlier: 600 s since 1,000.
            (1_600, None, &[], Some(1_000)),
            (1_700, None, &[], Some(1_200)),
            (2_500, None, &[], Some(1_200)),
        ],
    );
    assert_eq!(fired, ["idle:acme/van1:1600#idle-10"]);
}

#[test]
fn a_debounce_suppresses_rather_than_postpones() {
    let r = rules(
        "[[rules]]\nname = \"d\"\nkind = \"dwell\"\nmin_s = 60\nfences = [\"Depot\"]\ndebounce_s = 1000\n",
    );
    let (inside, out): (&[u64], &[u64]) = (&[DEPOT], &[]);
    let fired = run(
        &r,
        &[
            (1_000, None, inside, None),
            (1_060, None, inside, None),
            (1_100, None, out, None),
            // Back within the debounce: held, suppressed, and not fired
            // later in the same visit.
            (1_200, None, inside, None),
            (1_300, None, inside, None),
            (2_200, None, inside, None),
            (2_300, None, out, None),
            (2_400, None, inside, None),
            (2_460, None, inside, None),
        ],
    );
    assert_eq!(
        fired,
        [
            "dwell:acme/van1:1060:Depot#d",
            "dwell:acme/van1:2460:Depot#d"
        ]
    );
}

#[test]
fn schedule_days_and_times_are_checked() {
    let bad = |schedule: &str| {
        refusal(&format!(
            "[[rules]]\nname = \"s\"\nkind = \"enter\"\nschedule = {schedule}\n"
        ))
    };
    assert_eq!(
        bad(r#"{ days = ["month"], from = "08:00", to = "18:00", tz = "UTC" }"#),
        "rule \"s\": schedule: \"month\" is not a day (mon .. sun, or monday .. sunday)"
    );
    assert_eq!(
        bad(r#"{ from = "24:00", to = "06:00", tz = "UTC" }"#),
        "rule \"s\": schedule: from = \"24:00\": a period opens at 00:00 .. 23:59"
    );
    let r = rules(
        "[[rules]]\nname = \"s\"\nkind = \"enter\"\nschedule = { days = [\"Saturday\", \"sun\"], from = \"00:00\", to = \"24:00\", tz = \"UTC\" }\n",
    );
    let s = r.rules[0].schedule.as_ref().expect("schedule");
    assert!(s.active(at("2026-12-05T00:00:00Z")));
    assert!(s.active(at("2026-12-06T23:59:59Z")));
    assert!(!s.active(at("2026-12-07T00:00:00Z")));
}

#[test]
fn rule_state_is_stored_compactly_and_read_back() {
    let r = rules("[[rules]]\nname = \"fast\"\nkind = \"overspeed\"\nmax_kmh = 90\nmin_s = 30\n");
    let mut state = RuleState::default();
    let p = fix("van1", 1_000, Some(100));
    r.evaluate(
        &mut state,
        seen(&p, &[], None, None),
        &name,
        &mut Vec::new(),
    );
    let json = serde_json::to_string(&state).expect("json");
    assert_eq!(
        json,
        format!(
            "{{\"e\":[{{\"r\":{},\"f\":0,\"s\":1000,\"x\":false,\"l\":0}}]}}",
            fence_key("fast")
        )
    );
    let back: RuleState = serde_json::from_str(&json).expect("back");
    assert_eq!(back, state);
    // Back under the limit: nothing held, nothing stored.
    let p = fix("van1", 1_010, Some(80));
    r.evaluate(
        &mut state,
        seen(&p, &[], None, None),
        &name,
        &mut Vec::new(),
    );
    assert!(state.is_empty());
}

/// `van` at `north_m` metres north of 48°N 11°E at `tst`.
fn north(van: &str, tst: i64, north_m: f64) -> Position {
    Position {
        lat: 48.0 + north_m / 111_195.0,
        ..fix(van, tst, None)
    }
}

/// Runs the proximity rule `rule` over `fixes` in order: each event as
/// `(device, tst, peer, near)`.
fn near_run(
    rules: &Rules,
    state: &mut NearState,
    fixes: &[Position],
) -> Vec<(String, i64, String, bool)> {
    let mut events = Vec::new();
    for p in fixes {
        rules.near("close", state, p, &mut events);
    }
    events
        .into_iter()
        .map(|e| {
            assert_eq!(e.kind, EventKind::Proximity);
            assert_eq!(e.rule.as_deref(), Some("close"));
            (
                e.meta.device.to_string(),
                e.tst,
                e.peer.map(|p| p.to_string()).unwrap_or_default(),
                e.near.unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn two_devices_come_near_within_the_distance_and_part_only_past_the_hysteresis() {
    let r =
        rules("[[rules]]\nname = \"close\"\nkind = \"proximity\"\nwithin_m = 100\nleave_m = 150\n");
    let mut state = NearState::default();
    let fired = near_run(
        &r,
        &mut state,
        &[
            north("van1", 1000, 0.0),
            north("van2", 1010, 300.0),
            // 101 m apart: not yet.
            north("van2", 1020, 101.0),
            // 99 m: near, told for the device whose fix decided it.
            north("van2", 1030, 99.0),
            // 140 m: inside the hysteresis, still near.
            north("van1", 1040, -41.0),
            // 151 m: apart.
            north("van2", 1050, 110.0),
            // Near again from van1's side.
            north("van1", 1060, 20.0),
        ],
    );
    assert_eq!(
        fired,
        [
            ("van2".into(), 1030, "acme/van1".into(), true),
            ("van2".into(), 1050, "acme/van1".into(), false),
            ("van1".into(), 1060, "acme/van2".into(), true),
        ]
    );
    assert_eq!(state.pairs_near(), 1);
    // The id names the device, the fix, the peer and the rule.
    let mut events = Vec::new();
    let mut fresh = NearState::default();
    r.near("close", &mut fresh, &north("van1", 1, 0.0), &mut events);
    r.near("close", &mut fresh, &north("van2", 2, 10.0), &mut events);
    assert_eq!(events[0].id, "proximity:acme/van2:2:acme/van1:near#close");
    assert_eq!(events[0].distance, Some(10.0));
}

#[test]
fn a_stale_fix_is_not_compared_and_a_restored_state_goes_on_where_it_was() {
    let r =
        rules("[[rules]]\nname = \"close\"\nkind = \"proximity\"\nwithin_m = 100\nfresh_s = 60\n");
    let mut state = NearState::default();
    // van1 last reported 61 s before van2 passes by: not near anyone.
    let fired = near_run(
        &r,
        &mut state,
        &[north("van1", 1000, 0.0), north("van2", 1061, 0.0)],
    );
    assert!(fired.is_empty(), "{fired:?}");
    let fired = near_run(&r, &mut state, &[north("van1", 1070, 50.0)]);
    assert_eq!(fired, [("van1".into(), 1070, "acme/van2".into(), true)]);
    // Through its stored form, as after a restart: near stays near.
    let stored = serde_json::to_string(&state).expect("json");
    let mut restored: NearState = serde_json::from_str(&stored).expect("restored");
    assert_eq!(restored, state);
    let fired = near_run(
        &r,
        &mut restored,
        &[north("van2", 1080, 40.0), north("van2", 1090, 500.0)],
    );
    assert_eq!(fired, [("van2".into(), 1090, "acme/van1".into(), false)]);
    // A fix no newer than the device's last changes nothing.
    let mut events = Vec::new();
    assert!(!r.near(
        "close",
        &mut restored,
        &north("van2", 1090, 0.0),
        &mut events
    ));
    assert!(events.is_empty());
}

#[test]
fn proximity_keeps_to_its_devices_schedule_and_debounce() {
    let r = rules(
        "[[rules]]\nname = \"close\"\nkind = \"proximity\"\nwithin_m = 100\ndevices = [\"acme/van1\", \"acme/van2\"]\ndebounce_s = 600\n",
    );
    assert_eq!(
        r.near_rules("acme", "van1")
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        ["close"]
    );
    assert_eq!(r.near_rules("acme", "van3").count(), 0);
    let mut state = NearState::default();
    let fired = near_run(
        &r,
        &mut state,
        &[
            north("van1", 1000, 0.0),
            north("van3", 1001, 0.0),
            north("van2", 1002, 0.0),
            north("van2", 1100, 1000.0),
            // Near again within the debounce: not told, nor its parting.
            north("van2", 1200, 0.0),
            north("van2", 1300, 1000.0),
        ],
    );
    assert_eq!(
        fired,
        [
            ("van2".into(), 1002, "acme/van1".into(), true),
            ("van2".into(), 1100, "acme/van1".into(), false),
        ]
    );
    // After it: told (van1's fix is too old to compare with van2's last).
    let fired = near_run(
        &r,
        &mut state,
        &[north("van1", 1610, 0.0), north("van2", 1700, 0.0)],
    );
    assert_eq!(fired, [("van2".into(), 1700, "acme/van1".into(), true)]);
}

#[test]
fn a_rule_compares_at_most_its_bound_of_devices_and_makes_room_from_silent_ones() {
    let r =
        rules("[[rules]]\nname = \"close\"\nkind = \"proximity\"\nwithin_m = 10\nfresh_s = 60\n");
    let mut state = NearState::default();
    let mut events = Vec::new();
    for i in 0..near::MAX_DEVICES {
        // 20 m apart each: nobody near.
        let p = north(&format!("v{i}"), 1000, i as f64 * 20.0);
        assert!(r.near("close", &mut state, &p, &mut events));
    }
    assert_eq!(state.devices(), near::MAX_DEVICES);
    // Every device reported within fresh_s: no room for one more, not
    // even for a fix dated a day ahead (the server's clock judges quiet).
    assert!(!r.near("close", &mut state, &north("late", 1030, 0.0), &mut events));
    let mut ahead = north("ahead", 1030 + 86_400, 0.0);
    ahead.meta.received_at = 1_030_000;
    assert!(!r.near("close", &mut state, &ahead, &mut events));
    assert_eq!(state.devices(), near::MAX_DEVICES);
    // Once they are silent for longer, the newcomer takes the oldest's place.
    assert!(r.near("close", &mut state, &north("late", 1100, 5.0), &mut events));
    assert_eq!(state.devices(), near::MAX_DEVICES);
    assert!(events.is_empty());
}
