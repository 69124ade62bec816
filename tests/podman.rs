//! Podman's Docker API, end to end: the real agent binary against the private Podman service of
//! `tests/env.sh podman-up` (Podman 4.3: whole-second timestamps, lines written in several
//! writes stored as several entries stamped apart, TTY output). Each test follows only its own
//! containers (`CONTAINERS_INCLUDE`), so tests run side by side on one service.

mod util;

use std::collections::BTreeSet;

use serde_json::Value;
use util::podman::{podman, podman_engine, PodContainer};
use util::*;

/// An agent on the Podman service that follows only containers named `{prefix}-*`.
fn agent_for(prefix: &str, env: &[(&str, &str)]) -> Agent {
    let include = format!("{prefix}-*");
    let mut all = vec![("CONTAINERS_INCLUDE", include.as_str())];
    all.extend_from_slice(env);
    Agent::start_on(podman_engine(), &all)
}

/// The container lines (no `system` messages) of one container in the agent's memory.
fn lines(agent: &Agent, name: &str) -> Vec<Value> {
    agent
        .logs(&format!("service={name}&limit=10000"))
        .into_iter()
        .filter(|m| m["source"]["type"] == "container")
        .collect()
}

/// Waits until the agent has at least `n` lines of the container `name`; returns them.
fn wait_lines(agent: &Agent, name: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let ok = wait_until(PATIENCE, || {
        got = lines(agent, name);
        got.len() >= n
    });
    assert!(
        ok,
        "wanted {n} lines of {name}, got {:?}\nagent log:\n{}",
        messages(&got),
        agent.log()
    );
    got
}

/// Waits until the agent no longer follows `name`: after the container stopped, its reader
/// read the stream once more to its end (the read in which a line used to come twice).
fn wait_unfollowed(agent: &Agent, name: &str) {
    let followed = || {
        let (_, body) = agent.get("/api/v1/containers");
        json(&body)
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["name"] == name))
    };
    assert!(
        wait_until(PATIENCE, || !followed()),
        "{name} is still followed; agent log:\n{}",
        agent.log()
    );
}

/// `(id, message)` of each message, sorted.
fn id_texts(v: &[Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .iter()
        .map(|m| {
            let id = m["id"].as_str().unwrap_or_default().to_string();
            (id, m["message"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    out.sort();
    out
}

fn assert_unique_ids(v: &[Value], what: &str) {
    let ids: BTreeSet<&str> = v.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids.len(), v.len(), "{what}: ids are unique: {v:?}");
}

const SPLIT: &str =
    r#"echo hello; echo err >&2; printf "P line "; sleep 1; echo 3; echo done; exec sleep 600"#;

/// A line written in two parts a second apart is one line with clean text, with and without
/// a TTY; a second agent reading the same containers from their start gives every line the
/// same id; the read after the container stops repeats nothing.
#[test]
fn split_lines_arrive_once_clean_with_stable_ids() {
    let p = unique("pm-split");
    let agent = agent_for(&p, &[]);
    let plain = PodContainer::run(&format!("{p}-plain"), &[], SPLIT);
    let tty = PodContainer::run(&format!("{p}-tty"), &["-t"], SPLIT);
    let want = ["P line 3", "done", "err", "hello"];
    let mut first = Vec::new();
    for c in [&plain, &tty] {
        let got = wait_lines(&agent, &c.name, 4);
        let mut texts = messages(&got);
        texts.sort();
        assert_eq!(texts, want, "{}", c.name);
        assert_unique_ids(&got, &c.name);
        assert!(got
            .iter()
            .all(|m| m["id"].as_str().unwrap_or_default().starts_with(c.short())));
        first.push(id_texts(&got));
    }
    let tty_got = lines(&agent, &tty.name);
    assert!(tty_got.iter().all(|m| m["isStdErr"] == false));

    let again = agent_for(&p, &[("SINCE", "all")]);
    for (c, first) in [&plain, &tty].into_iter().zip(&first) {
        let got = wait_lines(&again, &c.name, 4);
        assert_eq!(&id_texts(&got), first, "the same ids from another agent");
    }

    for c in [&plain, &tty] {
        assert!(podman(&["kill", &c.name]).status.success());
        wait_unfollowed(&agent, &c.name);
    }
    for (c, first) in [&plain, &tty].into_iter().zip(&first) {
        assert_eq!(&id_texts(&lines(&agent, &c.name)), first, "nothing twice");
        assert!(wait_until(PATIENCE, || agent
            .file_lines("standalone", &c.name)
            .len()
            == 4));
        let file = agent.file_lines("standalone", &c.name);
        assert_eq!(&id_texts(&file), first, "the file holds the same lines");
    }
}

/// 50 lines stamped with one or two whole seconds: each once, in order, with its own id, also
/// after the read that follows the container's stop.
#[test]
fn fifty_lines_within_one_second_arrive_once_each() {
    let p = unique("pm-burst");
    let agent = agent_for(&p, &[]);
    let c = PodContainer::run(
        &format!("{p}-burst"),
        &[],
        r#"i=0; while [ $i -lt 50 ]; do i=$((i+1)); echo "line $i"; done; exec sleep 600"#,
    );
    let got = wait_lines(&agent, &c.name, 50);
    let want: Vec<String> = (1..=50).map(|i| format!("line {i}")).collect();
    assert_eq!(messages(&got), want);
    assert_unique_ids(&got, "burst");
    let seconds: BTreeSet<i64> = got.iter().filter_map(|m| m["timestamp"].as_i64()).collect();
    assert!(seconds.len() <= 2, "whole seconds: {seconds:?}");
    assert!(seconds.iter().all(|ms| ms % 1000 == 0), "{seconds:?}");
    assert!(podman(&["kill", &c.name]).status.success());
    wait_unfollowed(&agent, &c.name);
    assert_eq!(id_texts(&lines(&agent, &c.name)), id_texts(&got));
}

/// One round of the restart test's containers: a line in two writes, three whole lines and a
/// stderr line, all within one second or two.
const ROUNDS: usize = 60;
const ROUND: &str = r#"i=0; while [ $i -lt ROUNDS ]; do i=$((i+1)); printf "part $i "; sleep 0.1; echo "end $i"; echo "a $i"; echo "b $i"; echo "c $i"; echo "e $i" >&2; done; echo finished; exec sleep 600"#;

fn round_lines() -> Vec<String> {
    let mut want: Vec<String> = (1..=ROUNDS)
        .flat_map(|i| {
            [
                format!("part {i} end {i}"),
                format!("a {i}"),
                format!("b {i}"),
                format!("c {i}"),
                format!("e {i}"),
            ]
        })
        .collect();
    want.push("finished".into());
    want.sort();
    want
}

/// How many lines `podman logs` has of a container.
fn engine_lines(name: &str) -> usize {
    let out = podman(&["logs", name]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines().count()
}

/// The agent is stopped (SIGTERM) while two containers, with and without a TTY, keep logging
/// split lines and many lines per second, and started again: the files hold every line once,
/// and the memory of the restarted agent none of the lines written before the stop.
#[test]
fn agent_restart_mid_stream_loses_and_repeats_nothing() {
    let p = unique("pm-restart");
    let mut agent = agent_for(&p, &[]);
    let script = ROUND.replace("ROUNDS", &ROUNDS.to_string());
    let plain = PodContainer::run(&format!("{p}-plain"), &[], &script);
    let tty = PodContainer::run(&format!("{p}-tty"), &["-t"], &script);
    for c in [&plain, &tty] {
        assert!(wait_until(PATIENCE, || agent
            .file_lines("standalone", &c.name)
            .len()
            >= 30));
    }
    let (code, _) = agent.stop();
    assert_eq!(code, 0, "clean stop; log:\n{}", agent.log());
    let before: Vec<Vec<Value>> = [&plain, &tty]
        .iter()
        .map(|c| agent.file_lines("standalone", &c.name))
        .collect();
    for (c, b) in [&plain, &tty].into_iter().zip(&before) {
        let have = b.len();
        assert!(
            wait_until(PATIENCE, || engine_lines(&c.name) >= have + 40),
            "{} keeps logging while the agent is stopped",
            c.name
        );
    }
    agent.restart();
    let want = round_lines();
    for (c, before) in [&plain, &tty].into_iter().zip(&before) {
        let mut file = Vec::new();
        let done = wait_until(PATIENCE, || {
            file = agent.file_lines("standalone", &c.name);
            file.len() >= want.len()
        });
        let mut got = messages(&file);
        got.sort();
        let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
        let mut twice = got.clone();
        twice.dedup();
        let extra: Vec<&String> = got.iter().filter(|g| !want.contains(g)).collect();
        assert!(
            done && got == want,
            "{}: {} lines, want {}; missing {missing:?}, not wanted {extra:?}, repeated: {}; log:\n{}",
            c.name,
            got.len(),
            want.len(),
            got.len() - twice.len(),
            agent.log()
        );
        assert_unique_ids(&file, &c.name);
        // The restarted agent's memory holds what it read: the rest, none of the earlier lines.
        let read: Vec<(String, String)> = id_texts(&lines(&agent, &c.name));
        let earlier: Vec<(String, String)> = id_texts(before);
        assert!(read.iter().all(|l| !earlier.contains(l)), "{}", c.name);
        let mut all = [read, earlier].concat();
        all.sort();
        assert_eq!(all, id_texts(&file), "{}", c.name);
    }
}

/// A container's start and its death with its exit code are `system` messages.
#[test]
fn start_and_die_events_are_seen() {
    let p = unique("pm-events");
    let agent = agent_for(&p, &[]);
    let c = PodContainer::run(&format!("{p}-job"), &[], "echo working; sleep 1; exit 3");
    assert_eq!(c.wait(PATIENCE), 3);
    let system = |q: &str| -> Vec<Value> {
        agent
            .logs(q)
            .into_iter()
            .filter(|m| m["source"]["type"] == "system" && m["containerId"] == c.id.as_str())
            .collect()
    };
    let mut died = Vec::new();
    assert!(
        wait_until(PATIENCE, || {
            died = system("q=exit+code+3");
            !died.is_empty()
        }),
        "no system message for the exit; log:\n{}",
        agent.log()
    );
    assert_eq!(
        died[0]["message"],
        format!("container {} died with exit code 3", c.name)
    );
    assert_eq!(died[0]["level"], "error");
    let started = system("q=started");
    assert_eq!(
        messages(&started),
        [format!("container {} started", c.name)]
    );
    assert_eq!(messages(&wait_lines(&agent, &c.name, 1)), ["working"]);
}
