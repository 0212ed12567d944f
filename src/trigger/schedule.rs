//! Schedule ticks: which scheduled pipelines are due, each tick at most once.
//!
//! For every current, valid pipeline with `on.schedule`, each schedule (cron, 5 fields or 6 with
//! seconds first, in its time zone) fires at its ticks with the schedule's parameters. The time of
//! the last tick that fired is stored and flushed *before* the run is submitted, so a tick fires at
//! most once, also across a crash or restart.
//!
//! Ticks missed while Gantry was down are not replayed. The one exception: when the gap since the
//! last tick that fired is under two periods of the schedule, so exactly one tick was missed, that
//! tick fires once, late, as a catch-up run. A daily 03:00 job whose server restarted at 03:05
//! still runs; one whose server was down for two days runs at the next 03:00, not twice or three
//! times. A schedule seen for the first time starts from the moment it was first seen: it never
//! fires for ticks before that.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::spec::model::{ParamValue, Pipeline};
use crate::spec::values;
use crate::store::{Store, StoreError};

/// A tick that is due: run `source/name` at `version` with these parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Fire {
    pub source: String,
    pub name: String,
    pub version: u32,
    pub index: u16,
    pub tick: DateTime<Utc>,
    pub cron: String,
    pub params: BTreeMap<String, ParamValue>,
    /// True for the one catch-up run after downtime.
    pub catch_up: bool,
}

struct Entry {
    version: u32,
    schedules: Vec<(croner::Cron, Tz, crate::spec::model::Schedule)>,
}

/// Remembers parsed schedules between calls; cheap to keep for the life of the service.
#[derive(Default)]
pub struct Scheduler {
    cache: HashMap<(String, String), Entry>,
    /// When each schedule was first seen by this process, for schedules that never fired.
    first_seen: HashMap<(String, String, u16), DateTime<Utc>>,
}

fn next_tick(cron: &croner::Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn previous_tick(cron: &croner::Cron, tz: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_previous_occurrence(&at.with_timezone(&tz), true)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl Scheduler {
    pub fn new() -> Scheduler {
        Scheduler::default()
    }

    fn entry(
        &mut self,
        store: &Store,
        source: &str,
        name: &str,
        version: u32,
    ) -> Result<Option<&Entry>, StoreError> {
        let key = (source.to_string(), name.to_string());
        let fresh = self.cache.get(&key).is_some_and(|e| e.version == version);
        if !fresh {
            let Some(text) = store.get_version(source, name, version)? else {
                return Ok(None);
            };
            let schedules = crate::spec::check(&text.text)
                .pipeline
                .map(|p: Pipeline| p.on.schedule)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|s| {
                    let cron = values::parse_cron(&s.cron).ok()?;
                    let tz = values::parse_timezone(&s.timezone).ok()?;
                    Some((cron, tz, s))
                })
                .collect();
            self.cache.insert(key.clone(), Entry { version, schedules });
        }
        Ok(self.cache.get(&key))
    }

    /// The ticks due at `now`, each already marked as fired in the store. The caller submits
    /// them; a tick returned here is never returned again.
    pub fn due(&mut self, store: &Store, now: DateTime<Utc>) -> Result<Vec<Fire>, StoreError> {
        let mut out = Vec::new();
        for record in store.list_pipelines(None)? {
            let Some(version) = record.version else {
                continue;
            };
            if record.retired {
                continue;
            }
            let (source, name) = (record.source.clone(), record.name.clone());
            let Some(entry) = self.entry(store, &source, &name, version)? else {
                continue;
            };
            let mut found = Vec::new();
            for (i, (cron, tz, schedule)) in entry.schedules.iter().enumerate() {
                let index = u16::try_from(i).unwrap_or(u16::MAX);
                found.push((index, cron.clone(), *tz, schedule.clone()));
            }
            for (index, cron, tz, schedule) in found {
                let key = (source.clone(), name.clone(), index);
                let last = match store.schedule_mark(&source, &name, index)? {
                    Some(t) => t,
                    None => *self.first_seen.entry(key).or_insert(now),
                };
                let Some(next) = next_tick(&cron, tz, last) else {
                    continue;
                };
                if next > now {
                    continue;
                }
                // One or more ticks passed; only the latest counts, and it fires only if it is
                // the only one missed (a catch-up after downtime shorter than one period).
                let latest = previous_tick(&cron, tz, now).unwrap_or(next).max(next);
                let fire = latest == next;
                let catch_up = now - latest > chrono::Duration::seconds(5);
                let claimed = store.mark_schedule(&source, &name, index, latest)?;
                if claimed && fire {
                    out.push(Fire {
                        source: source.clone(),
                        name: name.clone(),
                        version,
                        index,
                        tick: latest,
                        cron: schedule.cron.clone(),
                        params: schedule.parameters.clone(),
                        catch_up,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The earliest tick after `now` over all cached schedules, to sleep until.
    pub fn next_wake(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cache
            .values()
            .flat_map(|e| e.schedules.iter())
            .filter_map(|(cron, tz, _)| next_tick(cron, *tz, now))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PipelineRecord;

    fn scheduled(store: &Store, cron: &str) {
        let text = format!(
            "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: tick\non:\n  schedule:\n    - cron: \"{cron}\"\n      parameters:\n        who: cron\nparameters:\n  - name: who\n    type: string\nsteps:\n  - name: say\n    script: echo {{{{params.who}}}}\n"
        );
        assert!(
            crate::spec::check(&text).pipeline.is_some(),
            "valid: {text}"
        );
        let version = store
            .record_version("local", "tick", &text, "", None)
            .expect("version");
        store
            .put_pipeline(&PipelineRecord {
                source: "local".into(),
                name: "tick".into(),
                path: String::new(),
                version: Some(version),
                commit: None,
                valid: true,
                errors: Vec::new(),
                retired: false,
                updated_at: Utc::now(),
                executor: None,
            })
            .expect("put");
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn each_tick_fires_once_and_never_before_first_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        scheduled(&store, "*/10 * * * *");
        let mut s = Scheduler::new();
        assert!(
            s.due(&store, at("2026-01-01T10:03:00Z"))
                .expect("due")
                .is_empty()
        );
        assert!(
            s.due(&store, at("2026-01-01T10:09:59Z"))
                .expect("due")
                .is_empty()
        );
        let fired = s.due(&store, at("2026-01-01T10:10:00Z")).expect("due");
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].tick, at("2026-01-01T10:10:00Z"));
        assert_eq!(fired[0].params["who"], ParamValue::String("cron".into()));
        assert!(!fired[0].catch_up);
        assert!(
            s.due(&store, at("2026-01-01T10:10:00Z"))
                .expect("due")
                .is_empty()
        );
        // A fresh scheduler (a restart) does not fire the same tick again.
        let mut after_restart = Scheduler::new();
        assert!(
            after_restart
                .due(&store, at("2026-01-01T10:10:05Z"))
                .expect("due")
                .is_empty()
        );
    }

    #[test]
    fn downtime_gives_one_catch_up_only_within_a_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        scheduled(&store, "*/10 * * * *");
        let mut s = Scheduler::new();
        assert!(
            s.due(&store, at("2026-01-01T10:03:00Z"))
                .expect("due")
                .is_empty()
        );
        assert_eq!(
            s.due(&store, at("2026-01-01T10:10:00Z"))
                .expect("due")
                .len(),
            1
        );
        // Down from 10:11 to 10:24, missing only the 10:20 tick: one catch-up run.
        let mut restarted = Scheduler::new();
        let fired = restarted
            .due(&store, at("2026-01-01T10:24:00Z"))
            .expect("due");
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].tick, at("2026-01-01T10:20:00Z"));
        assert!(fired[0].catch_up);
        // Down from 10:21 to 11:15, missing 10:30 to 11:10: nothing is replayed.
        let mut late = Scheduler::new();
        assert!(
            late.due(&store, at("2026-01-01T11:15:00Z"))
                .expect("due")
                .is_empty()
        );
        let on_time = late.due(&store, at("2026-01-01T11:20:00Z")).expect("due");
        assert_eq!(on_time.len(), 1);
        assert!(!on_time[0].catch_up);
    }

    #[test]
    fn six_fields_fire_every_second() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        scheduled(&store, "* * * * * *");
        let mut s = Scheduler::new();
        assert!(
            s.due(&store, at("2026-01-01T10:00:00Z"))
                .expect("due")
                .is_empty()
        );
        let mut fired = 0;
        for second in 1..=5 {
            let now = at("2026-01-01T10:00:00Z") + chrono::Duration::seconds(second);
            fired += s.due(&store, now).expect("due").len();
            fired += s.due(&store, now).expect("due").len();
        }
        assert_eq!(fired, 5);
    }
}
