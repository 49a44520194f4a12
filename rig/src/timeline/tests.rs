use super::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;
use time::OffsetDateTime;

mod basics {
    use super::*;

    fn samples() -> Vec<EventKind> {
        vec![
            EventKind::CellStart(Box::new(crate::timeline::CellStart {
                plan: "p".into(),
                plan_path: "p.yaml".into(),
                plan_sha256: "00".into(),
                name: "c".into(),
                vars: BTreeMap::from([("a".into(), "b".into())]),
                expect_failure: true,
                seed: 7,
                bench: "sim".into(),
                clock: "virtual".into(),
            })),
            EventKind::CellEnd {
                outcome: CellOutcome::Stopped,
            },
            EventKind::RigFault {
                step: Some(2),
                message: "m".into(),
            },
            EventKind::PowerOn { pid: Some(4242) },
            EventKind::PowerOff { pid: None },
            EventKind::ResetSoft,
            EventKind::FlashStart { fixture: "f".into() },
            EventKind::FlashDone {
                fixture: "f".into(),
                version: "1".into(),
                sha256: "ab".into(),
                ms: 3,
            },
            EventKind::ConsoleLine {
                line: "l".into(),
                partial: true,
            },
            EventKind::ConsoleGap { ms: 5 },
            EventKind::DeviceBoot,
            EventKind::DeviceReset {
                reason: "guest-reset".into(),
            },
            EventKind::DeviceWake {
                reason: Some("rtc".into()),
            },
            EventKind::DeviceSleep { secs: Some(900) },
            EventKind::CloudConfig {
                mitigation: "drop".into(),
            },
            EventKind::CloudHandshake { session: "s".into() },
            EventKind::CloudResumed { session: "s".into() },
            EventKind::CloudConnected {
                via: ConnectVia::Resume,
                session: "s".into(),
            },
            EventKind::CloudResumeUnknown {
                session: "s".into(),
                action: UnknownAction::Healed,
                resume: true,
            },
            EventKind::CloudPublish {
                session: "s".into(),
                topic: "t".into(),
            },
            EventKind::CloudRx {
                bytes: 80,
                msg: "record".into(),
                peer: "p".into(),
            },
            EventKind::CloudTx {
                bytes: 80,
                msg: "record".into(),
                peer: "p".into(),
            },
            EventKind::CloudExchange {
                msg: "record_resume".into(),
                rx: 80,
                tx: 40,
            },
            EventKind::CloudInvalid {
                reason: "r".into(),
                peer: "p".into(),
                count: 3,
                bytes: 9,
            },
            EventKind::CloudReplayAccepted {
                session: "s".into(),
                counter: 4,
                highest: 9,
            },
            EventKind::CacheKill {
                backend: "redis".into(),
                pid: Some(4242),
            },
            EventKind::CacheStart {
                backend: "memory".into(),
                pid: None,
            },
            EventKind::CacheRestore {
                from: "empty".into(),
                sessions: 0,
                pid: Some(4243),
            },
            EventKind::CacheSnapshot {
                name: "n".into(),
                sessions: 3,
            },
            EventKind::CacheFlush { sessions: 3 },
            EventKind::CacheEvict {
                fraction: 0.5,
                sessions: vec!["a".into()],
                devices: vec!["d".into()],
            },
            EventKind::CachePause { ms: 100 },
            EventKind::CacheResume,
            EventKind::CacheError {
                op: "get".into(),
                error: "down".into(),
            },
            EventKind::CacheCluster {
                nodes: vec![ClusterNode {
                    node: 1,
                    port: 7001,
                    role: "master".into(),
                    master: None,
                    slots: "0-16383".into(),
                }],
            },
            EventKind::CacheNodeKill(Box::new(NodeKill {
                node: 1,
                role: "master".into(),
                port: 7001,
                pid: Some(9),
                slots: "0-5460".into(),
                held: 3,
                promoted: Some(4),
                lost: 1,
                sessions: vec!["00000000000000aa".into()],
                devices: vec!["d".into()],
            })),
            EventKind::CacheNodeStart(Box::new(NodeStart {
                node: 1,
                from: "empty".into(),
                role: "replica".into(),
                port: 7001,
                pid: Some(10),
                slots: String::new(),
                sessions: 2,
            })),
            EventKind::CacheNodePause { node: 4, ms: 1000 },
            EventKind::CacheNodeResume { node: 4 },
            EventKind::CacheDied {
                backend: "redis".into(),
                pid: 77,
                how: "exit status: 0".into(),
            },
            EventKind::CloudProcess {
                pid: 42,
                command: "rig cloud serve --listen 127.0.0.1:5700".into(),
                upstream: "127.0.0.1:5700".into(),
            },
            EventKind::CloudLog {
                stream: "stderr".into(),
                line: "rig cloud: listening".into(),
            },
            EventKind::NetworkFault {
                fault: "loss".into(),
                ms: 600_000,
                loss: Some(0.3),
                delay_ms: None,
                devices: vec!["d".into()],
            },
            EventKind::NetworkHealed {
                fault: "loss".into(),
                dropped: 12,
                delayed: 0,
            },
            EventKind::PlanMark { name: "crash".into() },
            EventKind::PlanStep {
                index: 1,
                phase: "steps".into(),
                step: "wait 30s".into(),
            },
            EventKind::CheckPass {
                step: 1,
                check: "expect".into(),
                detail: "d".into(),
                facts: None,
            },
            EventKind::CheckFail {
                step: 1,
                check: "expect_recovery".into(),
                message: "m".into(),
                facts: Some(Box::new(RecoveryFacts {
                    mark: "crash".into(),
                    mark_t_ms: 1000,
                    recovered: false,
                    via: None,
                    wakes: 5,
                    ms: None,
                    bytes: 4100,
                    handshakes: 0,
                    unknown_resumes: 12,
                    power_cycled: false,
                    node: None,
                    lost: None,
                })),
            },
        ]
    }

    fn header() -> Header {
        Header {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            run_id: "r".into(),
            rig_version: "0".into(),
            seed: 1,
            bench: "sim".into(),
            plans: vec![],
            // Fixed, not now(): two calls a second apart must still be equal.
            started: OffsetDateTime::from_unix_timestamp(1_796_000_000).unwrap(),
            shard: None,
            console_lines: true,
        }
    }

    #[test]
    fn every_kind_round_trips_through_jsonl_and_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let header = header();
        let tl = Timeline::create(&path, &header).unwrap();
        let kinds = samples();
        assert_eq!(kinds.len(), EventTag::ALL.len(), "a sample per kind");
        for k in &kinds {
            assert_eq!(k.name().parse::<EventTag>(), Ok(k.tag()), "{} listed", k.name());
            tl.emit_device("dev", Source::Runner, k.clone());
        }
        let (h, evs) = read_jsonl(&path).unwrap();
        assert_eq!(h, header);
        // RFC 3339 keeps nanoseconds, so the stored events equal the live ones.
        assert_eq!(evs, tl.snapshot());
        let line = std::fs::read_to_string(&path).unwrap();
        assert!(line.contains(r#""kind":"cloud.resume_unknown""#));
    }

    /// A board or external cloud that died ends its cell; the next cell has
    /// a fresh world and must not be stopped by the old death (it was: every
    /// later cell of the run failed at once with the same fault).
    #[tokio::test]
    async fn a_board_fault_ends_its_cell_only() {
        let tl = Timeline::in_memory();
        tl.begin_cell(0);
        tl.board_failed("the external cloud exited".into());
        assert_eq!(tl.board_fault().await, "the external cloud exited");
        tl.begin_cell(1);
        let next = tokio::time::timeout(Duration::from_millis(50), tl.board_fault()).await;
        assert!(next.is_err(), "the next cell starts without a fault: {next:?}");
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let tl = Timeline::create(&path, &header()).unwrap();
        tl.emit(None, Source::Runner, EventKind::PowerOn { pid: None });
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"seq":1,"cell":0,"t_"#).unwrap();
        let (_, evs) = read_jsonl(&path).unwrap();
        assert_eq!(evs.len(), 1);
    }

    #[test]
    fn a_compressed_journal_reads_back_whole_and_when_cut_off_mid_frame() {
        use crate::timeline::live::Flush;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl.zst");
        let tl = Timeline::create_with(&path, &header(), Flush::Batched, true).unwrap();
        for i in 0..5000u64 {
            tl.emit_device(
                "dev",
                Source::Cloud,
                EventKind::CloudExchange {
                    msg: format!("m{i}"),
                    rx: i,
                    tx: 1,
                },
            );
        }
        tl.flush();
        let flushed = std::fs::metadata(&path).unwrap().len();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(&data[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd stream");
        let (h, evs) = read_jsonl(&path).unwrap();
        assert_eq!(h, header());
        assert_eq!(evs, tl.snapshot(), "every flushed event, before the stream is finished");
        // Killed mid-block: the blocks before the cut still decode.
        let cut = dir.path().join("cut.jsonl.zst");
        std::fs::write(&cut, &data[..(flushed as usize) * 3 / 4]).unwrap();
        let (_, some) = read_jsonl(&cut).unwrap();
        assert!(some.len() < evs.len());
        assert_eq!(some[..], evs[..some.len()], "a prefix, intact");
        drop(tl);
        assert!(std::fs::metadata(&path).unwrap().len() >= flushed, "finished on drop");
        assert_eq!(read_jsonl(&path).unwrap().1.len(), 5000);
    }

    #[test]
    fn a_batched_journal_writes_at_every_verdict_and_buffers_the_chatter() {
        use crate::timeline::live::Flush;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let tl = Timeline::create_with(&path, &header(), Flush::Batched, false).unwrap();
        let on_disk = || read_jsonl(&path).unwrap().1.len();
        tl.emit_device("dev", Source::Console, EventKind::DeviceWake { reason: None });
        tl.emit_device("dev", Source::Console, EventKind::DeviceSleep { secs: None });
        assert_eq!(on_disk(), 0, "device chatter waits for the batch");
        tl.emit_device(
            "dev",
            Source::Check,
            EventKind::CheckPass {
                step: 1,
                check: "expect".into(),
                detail: "ok".into(),
                facts: None,
            },
        );
        assert_eq!(
            on_disk(),
            3,
            "a verdict goes to the file at once, with what came before it"
        );
        // EveryEvent (the real clock) writes each one.
        let path2 = dir.path().join("every.jsonl");
        let every = Timeline::create_with(&path2, &header(), Flush::EveryEvent, false).unwrap();
        every.emit_device("dev", Source::Console, EventKind::DeviceWake { reason: None });
        assert_eq!(read_jsonl(&path2).unwrap().1.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_retention_keeps_seq_numbers_and_recent_events() {
        let tl = Timeline::in_memory().retain_last(10);
        for _ in 0..100 {
            tl.emit(None, Source::Runner, EventKind::PowerOn { pid: None });
        }
        assert_eq!(tl.len(), 100);
        let kept = tl.snapshot();
        assert!(kept.len() <= 20 && kept.len() >= 10, "{}", kept.len());
        assert_eq!(kept.last().unwrap().seq, 99);
        let mut seen = Vec::new();
        let hit = tl.wait(95, Some(Duration::ZERO), |e| {
            seen.push(e.seq);
            e.seq == 99
        });
        assert!(hit.await);
        assert_eq!(seen, [95, 96, 97, 98, 99]);
        let none = Timeline::in_memory().retain_last(0);
        none.emit(None, Source::Runner, EventKind::PowerOn { pid: None });
        none.emit(None, Source::Runner, EventKind::PowerOn { pid: None });
        none.emit(None, Source::Runner, EventKind::PowerOn { pid: None });
        assert!(none.snapshot().len() <= 2);
        assert_eq!(none.len(), 3);
    }

    /// `rig run` keeps only the last few thousand events: a waiting step
    /// that is polled after a burst of more than that (a fleet's devices all
    /// waking at one virtual instant) must still see every event of it.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_sees_every_event_however_few_are_retained() {
        let tl = Timeline::in_memory().retain_last(8);
        let tl2 = tl.clone();
        let waiter = tokio::spawn(async move {
            let mut seen = Vec::new();
            tl2.wait(0, Some(Duration::from_secs(60)), |e| {
                seen.push(e.seq);
                e.kind == EventKind::PowerOff { pid: None }
            })
            .await;
            seen
        });
        // The waiter registers, then 1,000 events arrive before it runs again.
        tokio::task::yield_now().await;
        for _ in 0..1000 {
            tl.emit(Some("a"), Source::Power, EventKind::PowerOn { pid: None });
        }
        tl.emit(Some("a"), Source::Power, EventKind::PowerOff { pid: None });
        let seen = waiter.await.unwrap();
        assert_eq!(seen, (0..=1000).collect::<Vec<u64>>(), "no event skipped");
        // With the waiter gone, memory goes back to the bound.
        for _ in 0..100 {
            tl.emit(None, Source::Runner, EventKind::PowerOn { pid: None });
        }
        assert!(tl.snapshot().len() <= 16, "{}", tl.snapshot().len());
    }

    /// What the checks ask of a cell's past comes from the index, which the
    /// retained events' bound does not touch.
    #[tokio::test(start_paused = true)]
    async fn the_cell_index_counts_since_marks_and_within_limits() {
        let tl = Timeline::in_memory().retain_last(2);
        tl.begin_cell(0);
        tl.want_limit("crash", 60_000);
        let resumed = |d: &str| {
            tl.emit(Some(d), Source::Cloud, EventKind::CloudResumed { session: "5".into() });
        };
        resumed("a");
        resumed("a");
        tl.emit(None, Source::Runner, EventKind::PlanMark { name: "crash".into() });
        resumed("a");
        resumed("b");
        tokio::time::advance(Duration::from_secs(61)).await;
        resumed("a");
        tl.emit_device(
            "a",
            Source::Console,
            EventKind::ConsoleLine {
                line: "zz".into(),
                partial: false,
            },
        );
        tl.index(|i| {
            let t = EventTag::CloudResumed;
            assert_eq!(i.count(Some("a"), t, None, None), Some(4), "since the cell began");
            assert_eq!(i.count(Some("a"), t, Some("crash"), None), Some(2), "since the mark");
            assert_eq!(
                i.count(Some("a"), t, Some("crash"), Some(60_000)),
                Some(1),
                "within 1 min of it"
            );
            assert_eq!(i.count(Some("b"), t, Some("crash"), Some(60_000)), Some(1));
            assert_eq!(i.count(Some("c"), t, Some("crash"), None), Some(0));
            assert_eq!(i.count(None, EventTag::PlanMark, None, None), Some(1));
            assert_eq!(i.count(Some("a"), t, Some("never-set"), None), None);
            assert_eq!(i.last_console_line("a").as_deref(), Some("zz"));
            assert_eq!(i.last_console_line("b"), None);
        });
        tl.emit(
            None,
            Source::Cache,
            EventKind::CacheKill {
                backend: "memory".into(),
                pid: None,
            },
        );
        let all = vec!["a".to_string(), "b".to_string()];
        let lost = tl.index(|i| i.lost_since(0, &all));
        assert_eq!(lost.len(), 2, "a cache kill loses every device's session");
        // The next cell starts from nothing.
        tl.begin_cell(1);
        assert_eq!(
            tl.index(|i| i.count(Some("a"), EventTag::CloudResumed, None, None)),
            Some(0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sees_each_event_once_and_times_out() {
        let tl = Timeline::in_memory();
        tl.emit(None, Source::Runner, EventKind::PowerOn { pid: None });
        let tl2 = tl.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tl2.emit(Some("a"), Source::Power, EventKind::PowerOff { pid: None });
        });
        let mut seen = Vec::new();
        let hit = tl
            .wait(0, Some(Duration::from_secs(10)), |e| {
                seen.push(e.seq);
                e.kind == EventKind::PowerOff { pid: None }
            })
            .await;
        assert!(hit);
        assert_eq!(seen, vec![0, 1]);
        assert_eq!(tl.now_ms(), 5000);
        let hit = tl.wait(2, Some(Duration::from_secs(10)), |_| true).await;
        assert!(!hit);
        assert_eq!(tl.now_ms(), 15000);
    }
}

mod roundtrip {
    //! Property: whatever an event holds (any text, any numbers), the journal
    //! gives back exactly what was emitted.
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        // Any unicode, quotes, backslashes and line breaks included.
        proptest::string::string_regex("(.|\n|\"|\\\\){0,40}").unwrap()
    }

    fn facts() -> impl Strategy<Value = Option<RecoveryFacts>> {
        proptest::option::of(
            (
                text(),
                any::<u64>(),
                any::<bool>(),
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
            )
                .prop_map(
                    |(mark, t, recovered, wakes, bytes, handshakes, unknown)| RecoveryFacts {
                        mark,
                        mark_t_ms: t,
                        recovered,
                        via: recovered.then_some(ConnectVia::Handshake),
                        wakes,
                        ms: recovered.then_some(t / 2),
                        bytes,
                        handshakes,
                        unknown_resumes: unknown,
                        power_cycled: !recovered,
                        node: None,
                        lost: None,
                    },
                ),
        )
    }

    fn kind() -> impl Strategy<Value = EventKind> {
        prop_oneof![
            (text(), text(), any::<bool>(), any::<u64>()).prop_map(|(plan, name, ef, seed)| EventKind::CellStart(
                Box::new(crate::timeline::CellStart {
                    plan: plan.clone(),
                    plan_path: name.clone(),
                    plan_sha256: "ab".into(),
                    name,
                    vars: BTreeMap::from([(plan, "v".into())]),
                    expect_failure: ef,
                    seed,
                    bench: "b".into(),
                    clock: "virtual".into(),
                })
            )),
            (proptest::option::of(any::<usize>()), text())
                .prop_map(|(step, message)| EventKind::RigFault { step, message }),
            Just(EventKind::PowerOn { pid: None }),
            Just(EventKind::PowerOff { pid: None }),
            (text(), text(), text(), any::<u64>()).prop_map(|(fixture, version, sha256, ms)| EventKind::FlashDone {
                fixture,
                version,
                sha256,
                ms
            }),
            (text(), any::<bool>()).prop_map(|(line, partial)| EventKind::ConsoleLine { line, partial }),
            any::<u64>().prop_map(|ms| EventKind::ConsoleGap { ms }),
            proptest::option::of(text()).prop_map(|reason| EventKind::DeviceWake { reason }),
            proptest::option::of(any::<u64>()).prop_map(|secs| EventKind::DeviceSleep { secs }),
            text().prop_map(|session| EventKind::CloudResumed { session }),
            (text(), any::<bool>()).prop_map(|(session, resume)| EventKind::CloudResumeUnknown {
                session,
                action: if resume {
                    UnknownAction::Healed
                } else {
                    UnknownAction::Dropped
                },
                resume
            }),
            (any::<u64>(), text(), text()).prop_map(|(bytes, msg, peer)| EventKind::CloudRx { bytes, msg, peer }),
            (text(), text(), any::<u64>(), any::<u64>()).prop_map(|(reason, peer, count, bytes)| {
                EventKind::CloudInvalid {
                    reason,
                    peer,
                    count,
                    bytes,
                }
            }),
            (text(), any::<u64>(), any::<u64>()).prop_map(|(session, counter, highest)| {
                EventKind::CloudReplayAccepted {
                    session,
                    counter,
                    highest,
                }
            }),
            (text(), proptest::option::of(any::<u32>()))
                .prop_map(|(backend, pid)| EventKind::CacheKill { backend, pid }),
            (any::<u64>(), proptest::collection::vec(text(), 0..3)).prop_map(|(n, sessions)| EventKind::CacheEvict {
                fraction: (n % 1000) as f64 / 1000.0,
                devices: sessions.clone(),
                sessions,
            }),
            (text(), any::<u32>(), text()).prop_map(|(backend, pid, how)| EventKind::CacheDied { backend, pid, how }),
            (any::<usize>(), text(), text(), facts()).prop_map(|(step, check, detail, facts)| EventKind::CheckPass {
                step,
                check,
                detail,
                facts: facts.map(Box::new)
            }),
            (any::<usize>(), text(), text(), facts()).prop_map(|(step, check, message, facts)| EventKind::CheckFail {
                step,
                check,
                message,
                facts: facts.map(Box::new)
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn whatever_is_emitted_is_read_back(events in proptest::collection::vec((proptest::option::of(text()), kind()), 0..30)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("events.jsonl");
            let header = Header {
                format: FORMAT.into(),
                version: FORMAT_VERSION,
                run_id: "r".into(),
                rig_version: "0".into(),
                seed: 1,
                bench: "b".into(),
                plans: vec![],
                started: OffsetDateTime::UNIX_EPOCH,
                shard: None,
                console_lines: true,
            };
            let tl = Timeline::create(&path, &header).unwrap();
            for (device, kind) in events {
                tl.emit(device.as_deref(), Source::Runner, kind);
            }
            let (h, evs) = read_jsonl(&path).unwrap();
            prop_assert_eq!(h, header);
            prop_assert_eq!(evs, tl.snapshot());
        }
    }
}
