//! Store conformance: every test body is written once against
//! `&dyn NotificationStore` and instantiated for the SQLite adapter (a temp
//! file) and the CQL adapter (the real Cassandra/ScyllaDB node from
//! `cql_node`, one keyspace per test binary run, one webhook id per test).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use herald_core::{
    Accepted, Attempt, HeaderValue, Method, Notification, NotificationContent, NotificationId,
    NotificationState, Outcome, RenderedHeader, RenderedRequest, Status, Trigger,
};
use herald_store::cql::{
    CqlConfig, CqlStore, Replication, apply_optional_compaction, connect_session, migrate,
};
use herald_store::sqlite::{SqliteConfig, SqliteStore};
use herald_store::{
    AttemptOf, ListQuery, NotificationStore, Page, StoreError, StoreLimits, TimeRange,
};
use herald_tests::{cql_node, unique_name};
use uuid::Uuid;

// ---------------------------------------------------------------- fixtures

/// 2025-06-30T23:59:00Z: listings in the tests straddle a UTC midnight, so
/// the CQL adapter's day buckets are crossed.
fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 30, 23, 59, 0).unwrap()
}

fn at(ms: i64) -> DateTime<Utc> {
    base() + Duration::milliseconds(ms)
}

fn request(body: impl Into<String>) -> RenderedRequest {
    RenderedRequest {
        method: Method::Post,
        url: "https://receiver.example/hooks?x=1".into(),
        headers: vec![
            RenderedHeader {
                name: "x-static".into(),
                value: HeaderValue::Text("v".into()),
            },
            RenderedHeader {
                name: "authorization".into(),
                value: HeaderValue::Secret {
                    name: "partner_api_key".into(),
                    prefix: "Bearer ".into(),
                },
            },
        ],
        content_type: "application/json".into(),
        body: body.into(),
    }
}

fn notification(webhook: &str, n: u32, created: DateTime<Utc>) -> Notification {
    let event_id = format!("evt-{n}");
    Notification {
        id: NotificationId::derive("/core/loans", &event_id, webhook),
        webhook_id: webhook.into(),
        event_source: "/core/loans".into(),
        event_id,
        event_type: "loan.disbursed".into(),
        subject: Some(format!("loan-{n}")),
        event_time: created - Duration::seconds(1),
        created_at: created,
        template_hash: "sha256:abc".into(),
        content: NotificationContent::Rendered(request(format!("{{\"n\":{n}}}"))),
    }
}

fn render_failed(webhook: &str, n: u32, created: DateTime<Utc>) -> Notification {
    Notification {
        content: NotificationContent::RenderFailed {
            error: "missing field `amount`".into(),
        },
        ..notification(webhook, n, created)
    }
}

fn attempt(
    n: &Notification,
    no: u32,
    started: DateTime<Utc>,
    outcome: Outcome,
    next: Option<DateTime<Utc>>,
) -> Attempt {
    Attempt {
        notification_id: n.id,
        attempt_id: Uuid::now_v7(),
        attempt_no: no,
        trigger: if no == 1 {
            Trigger::Auto
        } else {
            Trigger::Retry
        },
        started_at: started,
        duration_ms: 12,
        outcome,
        http_status: match outcome {
            Outcome::Success => Some(200),
            Outcome::HttpError => Some(503),
            _ => None,
        },
        error: (outcome != Outcome::Success).then(|| "503 service unavailable".into()),
        response_excerpt: Some("{\"ok\":false}".into()),
        next_attempt_at: next,
    }
}

fn day_range() -> TimeRange {
    TimeRange::new(base() - Duration::days(1), base() + Duration::days(1))
}

/// Every page of a listing, following cursors to the end.
async fn all_pages(store: &dyn NotificationStore, query: ListQuery, exhausted: bool) -> Vec<Page> {
    let mut pages = Vec::new();
    let mut q = query;
    loop {
        let page = if exhausted {
            store.list_exhausted(&q).await.unwrap()
        } else {
            store.list(&q).await.unwrap()
        };
        let next = page.next_cursor.clone();
        pages.push(page);
        match next {
            Some(c) => q = q.with_cursor(Some(c)),
            None => return pages,
        }
        assert!(pages.len() < 1000, "listing does not end");
    }
}

async fn listed_ids(store: &dyn NotificationStore, query: ListQuery) -> Vec<NotificationId> {
    ids_of(&all_pages(store, query, false).await)
}

fn ids_of(pages: &[Page]) -> Vec<NotificationId> {
    pages
        .iter()
        .flat_map(|p| p.items.iter().map(|i| i.notification.id))
        .collect()
}

// ------------------------------------------------------------------- tests

async fn reappending_a_notification_stores_it_once(store: &dyn NotificationStore) {
    let wh = unique_name("wh");
    let n = notification(&wh, 1, at(0));
    let other = notification(&wh, 2, at(0));
    let found = store
        .append_notifications(std::slice::from_ref(&n))
        .await
        .unwrap();
    assert_eq!(found, vec![Accepted::New]);
    let known = |state: NotificationState| Accepted::Existing {
        stored: Box::new(n.clone()),
        state,
    };
    let pending = NotificationState::initial(&n.content);
    let found = store
        .append_notifications(&[n.clone(), other.clone(), n.clone()])
        .await
        .unwrap();
    assert_eq!(
        found,
        vec![
            known(pending.clone()),
            Accepted::New,
            known(pending.clone())
        ],
        "one answer per notification, in order"
    );
    // A new id twice in one batch: stored by its first occurrence, which
    // the second one finds, as a later batch would.
    let twice = notification(&wh, 3, at(0));
    let mut rerendered = twice.clone();
    rerendered.content = NotificationContent::Rendered(request("{\"n\":\"other\"}"));
    let found = store
        .append_notifications(&[twice.clone(), rerendered])
        .await
        .unwrap();
    assert_eq!(
        found,
        vec![
            Accepted::New,
            Accepted::Existing {
                stored: Box::new(twice.clone()),
                state: NotificationState::initial(&twice.content),
            }
        ]
    );
    assert_eq!(
        store.get(twice.id).await.unwrap().unwrap().notification,
        twice
    );
    // A replay that re-renders later: same id, new time and body. The first
    // record wins and no second listing entry appears; the answer carries
    // the stored record, so whatever is sent is what is stored.
    let mut replay = n.clone();
    replay.created_at = at(60_000);
    replay.content = NotificationContent::Rendered(request("{\"n\":\"changed\"}"));
    let found = store.append_notifications(&[replay]).await.unwrap();
    assert_eq!(found, vec![known(pending.clone())]);

    let rec = store.get(n.id).await.unwrap().expect("stored");
    assert_eq!(rec.notification, n);
    assert!(rec.attempts.is_empty());
    assert_eq!(rec.state, NotificationState::initial(&n.content));
    let ids = listed_ids(store, ListQuery::new(&wh, day_range(), 10)).await;
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&n.id) && ids.contains(&other.id) && ids.contains(&twice.id));
    assert_eq!(
        store.state(n.id).await.unwrap().unwrap().status,
        Status::Pending
    );

    // Re-appending after attempts does not reset the state to pending.
    let a = attempt(&n, 1, at(1_000), Outcome::Success, None);
    store
        .append_attempts(std::slice::from_ref(&a))
        .await
        .unwrap();
    let found = store
        .append_notifications(std::slice::from_ref(&n))
        .await
        .unwrap();
    let [Accepted::Existing { stored, state }] = &found[..] else {
        panic!("known: {found:?}");
    };
    assert_eq!(**stored, n);
    assert_eq!((state.status, state.attempts), (Status::Delivered, 1));
    store.append_attempts(&[a]).await.unwrap();
    let rec = store.get(n.id).await.unwrap().unwrap();
    assert_eq!(
        rec.attempts.len(),
        1,
        "an attempt appended twice is one record"
    );
    assert_eq!(
        store.state(n.id).await.unwrap().unwrap().status,
        Status::Delivered
    );
}

async fn attempts_come_back_ordered_by_time(store: &dyn NotificationStore) {
    let wh = unique_name("wh");
    let n = notification(&wh, 1, at(0));
    store
        .append_notifications(std::slice::from_ref(&n))
        .await
        .unwrap();
    let a1 = attempt(&n, 1, at(1_000), Outcome::Timeout, Some(at(11_000)));
    let a2 = attempt(&n, 2, at(11_000), Outcome::HttpError, Some(at(71_000)));
    let a3 = attempt(&n, 3, at(71_000), Outcome::Success, None);
    store
        .append_attempts(&[a3.clone(), a1.clone()])
        .await
        .unwrap();
    store
        .append_attempts(std::slice::from_ref(&a2))
        .await
        .unwrap();
    let rec = store.get(n.id).await.unwrap().unwrap();
    assert_eq!(rec.attempts, vec![a1, a2, a3]);
    assert_eq!(rec.state.status, Status::Delivered);
    assert_eq!(rec.state.attempts, 3);
}

/// Append `atts` one call each, in order; the state the store then holds,
/// which must be the reference projection's.
async fn append_one_by_one(
    store: &dyn NotificationStore,
    n: &Notification,
    atts: &[Attempt],
) -> NotificationState {
    for a in atts {
        store
            .append_attempts(std::slice::from_ref(a))
            .await
            .unwrap();
    }
    let s = store.state(n.id).await.unwrap().unwrap();
    assert_eq!(s, NotificationState::derive(&n.content, atts), "{atts:?}");
    s
}

/// Delivered is final: an attempt two workers both made (one lost its
/// partition with it in flight) may be recorded after the success, with a
/// later start and a failure; the notification stays delivered, with no
/// retry due, whatever the arrival order. The count and last attempt time
/// still move. Found by the flapping-receivers chaos run.
async fn a_duplicate_failure_after_a_delivery_leaves_it_delivered(store: &dyn NotificationStore) {
    let wh = unique_name("wh");
    for (i, reversed) in [(0, false), (1, true)] {
        let n = notification(&wh, i, at(0));
        store
            .append_notifications(std::slice::from_ref(&n))
            .await
            .unwrap();
        let mut atts = vec![
            attempt(&n, 1, at(1_000), Outcome::Success, None),
            attempt(&n, 1, at(1_500), Outcome::HttpError, Some(at(61_500))),
        ];
        if reversed {
            atts.reverse();
        }
        let s = append_one_by_one(store, &n, &atts).await;
        assert_eq!(
            (s.status, s.attempts, s.last_attempt_at, s.next_attempt_at),
            (Status::Delivered, 1, Some(at(1_500)), None),
            "reversed {reversed}"
        );
    }
}

/// A failed manual re-send changes no status: the scheduled retry (or the
/// exhaustion) stands, whatever the arrival order; a successful one
/// delivers. The count and last attempt time still move.
async fn a_failed_manual_resend_changes_no_status(store: &dyn NotificationStore) {
    let wh = unique_name("wh");
    let manual = |n: &Notification, no, started, outcome| Attempt {
        trigger: Trigger::Manual,
        ..attempt(n, no, started, outcome, None)
    };
    for (i, reversed) in [(0, false), (1, true)] {
        let n = notification(&wh, i, at(0));
        store
            .append_notifications(std::slice::from_ref(&n))
            .await
            .unwrap();
        let mut atts = vec![
            attempt(&n, 1, at(1_000), Outcome::HttpError, Some(at(60_000))),
            manual(&n, 2, at(2_000), Outcome::Timeout),
        ];
        if reversed {
            atts.reverse();
        }
        let s = append_one_by_one(store, &n, &atts).await;
        assert_eq!(
            (s.status, s.attempts, s.last_attempt_at, s.next_attempt_at),
            (Status::Retrying, 2, Some(at(2_000)), Some(at(60_000))),
            "reversed {reversed}"
        );
        let failed = all_pages(
            store,
            ListQuery::new(&wh, day_range(), 10).with_status(Status::Failed),
            false,
        )
        .await;
        assert!(failed.iter().all(|p| p.items.is_empty()), "not failed");
        // A successful re-send delivers.
        let ok = manual(&n, 3, at(3_000), Outcome::Success);
        store
            .append_attempts(std::slice::from_ref(&ok))
            .await
            .unwrap();
        let s = store.state(n.id).await.unwrap().unwrap();
        assert_eq!((s.status, s.next_attempt_at), (Status::Delivered, None));
        assert_eq!(store.attempts(n.id).await.unwrap().len(), 3);
    }
    // Exhausted, then a failed re-send: still failed, still listed for a
    // bulk re-send.
    let n = notification(&wh, 10, at(0));
    store
        .append_notifications(std::slice::from_ref(&n))
        .await
        .unwrap();
    let atts = [
        attempt(&n, 1, at(1_000), Outcome::HttpError, None),
        manual(&n, 2, at(2_000), Outcome::HttpError),
    ];
    store.append_attempts(&atts).await.unwrap();
    assert_eq!(
        store.state(n.id).await.unwrap().unwrap().status,
        Status::Failed
    );
    let listed = all_pages(store, ListQuery::new(&wh, day_range(), 10), true).await;
    let ids: Vec<_> = listed
        .iter()
        .flat_map(|p| &p.items)
        .map(|l| l.notification.id)
        .collect();
    assert_eq!(ids, vec![n.id]);
}

async fn state_converges_whatever_the_arrival_order(store: &dyn NotificationStore) {
    let wh = unique_name("wh");
    let orders: [&[usize]; 4] = [&[0, 1, 2], &[2, 1, 0], &[1, 2, 0], &[2, 0, 1]];
    for (i, order) in orders.iter().enumerate() {
        // Failed, failed, success: delivered wins.
        let n = notification(&wh, i as u32, at(i as i64));
        store
            .append_notifications(std::slice::from_ref(&n))
            .await
            .unwrap();
        let atts = [
            attempt(&n, 1, at(1_000), Outcome::HttpError, Some(at(2_000))),
            attempt(&n, 2, at(2_000), Outcome::Timeout, Some(at(3_000))),
            attempt(&n, 3, at(3_000), Outcome::Success, None),
        ];
        for &k in *order {
            store
                .append_attempts(std::slice::from_ref(&atts[k]))
                .await
                .unwrap();
        }
        let projected = store.state(n.id).await.unwrap().unwrap();
        let derived = NotificationState::derive(&n.content, &atts);
        assert_eq!(projected, derived, "order {order:?}");
        assert_eq!(projected.status, Status::Delivered);
        assert_eq!(projected.attempts, 3);
        assert_eq!(projected.last_attempt_at, Some(at(3_000)));
        assert_eq!(projected.next_attempt_at, None);
        // A replay of an old attempt changes nothing.
        store
            .append_attempts(std::slice::from_ref(&atts[0]))
            .await
            .unwrap();
        assert_eq!(store.state(n.id).await.unwrap().unwrap(), derived);
    }

    // Retrying then exhausted, delivered last in the wrong order.
    let n = notification(&wh, 100, at(0));
    store
        .append_notifications(std::slice::from_ref(&n))
        .await
        .unwrap();
    let exhausted = attempt(&n, 2, at(5_000), Outcome::ConnectionError, None);
    let first = attempt(&n, 1, at(1_000), Outcome::HttpError, Some(at(5_000)));
    store
        .append_attempts(std::slice::from_ref(&exhausted))
        .await
        .unwrap();
    store
        .append_attempts(std::slice::from_ref(&first))
        .await
        .unwrap();
    let s = store.state(n.id).await.unwrap().unwrap();
    assert_eq!(
        (s.status, s.attempts, s.next_attempt_at),
        (Status::Failed, 2, None)
    );
    // A delivery host whose clock runs behind the ingest host: the attempt
    // "starts" before the notification was created, and still wins over the
    // initial pending state.
    let n = notification(&wh, 102, at(10_000));
    store
        .append_notifications(std::slice::from_ref(&n))
        .await
        .unwrap();
    store
        .append_attempts(&[attempt(&n, 1, at(9_990), Outcome::Success, None)])
        .await
        .unwrap();
    assert_eq!(
        store.state(n.id).await.unwrap().unwrap().status,
        Status::Delivered
    );
    // A still-retrying notification exposes when the next attempt is due.
    let n = notification(&wh, 101, at(0));
    store
        .append_notifications(std::slice::from_ref(&n))
        .await
        .unwrap();
    store
        .append_attempts(&[attempt(&n, 1, at(1_000), Outcome::Timeout, Some(at(9_000)))])
        .await
        .unwrap();
    let s = store.state(n.id).await.unwrap().unwrap();
    assert_eq!(
        (s.status, s.next_attempt_at),
        (Status::Retrying, Some(at(9_000)))
    );
}

async fn pages_never_skip_or_repeat_a_row(store: &dyn NotificationStore) {
    let wh = unique_name("wh");
    // 57 rows; groups of 5 share a created_at; they straddle midnight.
    let all: Vec<Notification> = (0..57)
        .map(|i| notification(&wh, i, at((i as i64 / 5) * 10_000)))
        .collect();
    for chunk in all.chunks(20) {
        store.append_notifications(chunk).await.unwrap();
    }
    let q = ListQuery::new(&wh, day_range(), 10);
    let first = store.list(&q).await.unwrap();
    assert_eq!(first.items.len(), 10);
    // Rows appended after the first page, newer than all, must not shift
    // the following pages.
    store
        .append_notifications(&[notification(&wh, 1000, at(600_000))])
        .await
        .unwrap();
    let mut pages = vec![first.clone()];
    pages.extend(all_pages(store, q.clone().with_cursor(first.next_cursor), false).await);
    for p in &pages {
        assert!(p.items.len() <= 10);
    }
    let ids = ids_of(&pages);
    assert_eq!(ids.len(), 57, "every row exactly once");
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 57, "no row repeated");
    let expected: HashSet<_> = all.iter().map(|n| n.id).collect();
    assert_eq!(unique, expected.iter().collect());
    // Newest first.
    let times: Vec<_> = pages
        .iter()
        .flat_map(|p| p.items.iter().map(|i| i.notification.created_at))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    // A page size of 1 still walks through rows with equal created_at.
    let ids = listed_ids(
        store,
        ListQuery::new(&wh, TimeRange::new(at(0), at(10_000)), 1),
    )
    .await;
    assert_eq!(ids.len(), 5);
    // A cursor from another store or a typo is refused.
    let err = store
        .list(&q.clone().with_cursor(Some("not-a-cursor".into())))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidCursor(_)), "{err}");
    assert!(!err.is_retriable());
}

async fn time_range_is_from_inclusive_to_exclusive(store: &dyn NotificationStore) {
    let wh = unique_name("wh");
    let (from, to) = (at(0), at(120_000)); // crosses midnight
    let before = notification(&wh, 1, from - Duration::milliseconds(1));
    let on_from = notification(&wh, 2, from);
    let last = notification(&wh, 3, to - Duration::milliseconds(1));
    let on_to = notification(&wh, 4, to);
    store
        .append_notifications(&[before, on_from.clone(), last.clone(), on_to])
        .await
        .unwrap();
    let ids = listed_ids(store, ListQuery::new(&wh, TimeRange::new(from, to), 10)).await;
    assert_eq!(ids, vec![last.id, on_from.id]);
    // Adjacent ranges partition the rows.
    let mid = at(60_000);
    let a = listed_ids(store, ListQuery::new(&wh, TimeRange::new(from, mid), 10)).await;
    let b = listed_ids(store, ListQuery::new(&wh, TimeRange::new(mid, to), 10)).await;
    assert_eq!([b, a].concat(), vec![last.id, on_from.id]);
    // Empty and inverted ranges hold nothing.
    assert!(
        listed_ids(store, ListQuery::new(&wh, TimeRange::new(to, from), 10))
            .await
            .is_empty()
    );
    assert!(
        listed_ids(store, ListQuery::new(&wh, TimeRange::new(from, from), 10))
            .await
            .is_empty()
    );
}

async fn large_bodies_round_trip_byte_identical(store: &dyn NotificationStore) {
    let wh = unique_name("wh");
    // 1 MiB exactly, with multi-byte chars and JSON-hostile characters.
    let mut body = String::with_capacity(1 << 20);
    let pattern = "{\"k\":\"\\\"quoted\\\" é € 😀 \\n\"}\t\r\n";
    while body.len() + pattern.len() <= 1 << 20 {
        body.push_str(pattern);
    }
    while body.len() < 1 << 20 {
        body.push('x');
    }
    assert_eq!(body.len(), 1 << 20);
    let mut n = notification(&wh, 1, at(0));
    n.content = NotificationContent::Rendered(request(body.clone()));
    store
        .append_notifications(std::slice::from_ref(&n))
        .await
        .unwrap();
    let rec = store.get(n.id).await.unwrap().unwrap();
    assert_eq!(
        rec.notification.request().unwrap().body.as_bytes(),
        body.as_bytes()
    );
    assert_eq!(rec.notification, n);

    // Above the limit: refused, permanently, and nothing is stored.
    let mut big = notification(&wh, 2, at(0));
    big.content = NotificationContent::Rendered(request(
        "x".repeat(StoreLimits::DEFAULT_MAX_REQUEST_BODY_BYTES + 1),
    ));
    let err = store
        .append_notifications(std::slice::from_ref(&big))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    assert!(!err.is_retriable());
    assert!(store.get(big.id).await.unwrap().is_none());
}

async fn unicode_round_trips(store: &dyn NotificationStore) {
    let wh = format!("{}_вебхук_🪝", unique_name("wh"));
    let text = "Zürich · Ελληνικά · 中文 · العربية · 👩‍👩‍👧 · e\u{301} · \u{200d}";
    let mut n = notification(&wh, 1, at(0));
    n.subject = Some(text.into());
    n.event_type = format!("loan.{text}");
    n.template_hash = text.into();
    let mut req = request(format!("{{\"memo\":\"{text}\"}}"));
    req.headers.push(RenderedHeader {
        name: "x-memo".into(),
        value: HeaderValue::Text(text.into()),
    });
    n.content = NotificationContent::Rendered(req);
    store
        .append_notifications(std::slice::from_ref(&n))
        .await
        .unwrap();
    let mut a = attempt(&n, 1, at(1_000), Outcome::HttpError, Some(at(2_000)));
    a.response_excerpt = Some(text.into());
    a.error = Some(format!("bad: {text}"));
    store
        .append_attempts(std::slice::from_ref(&a))
        .await
        .unwrap();
    let rec = store.get(n.id).await.unwrap().unwrap();
    assert_eq!(rec.notification, n);
    assert_eq!(rec.attempts, vec![a]);
    let ids = listed_ids(store, ListQuery::new(&wh, day_range(), 5)).await;
    assert_eq!(ids, vec![n.id]);
}

async fn list_exhausted_returns_exactly_the_failed_ones(store: &dyn NotificationStore) {
    let wh = unique_name("wh");
    let other = unique_name("wh_other");
    let range = TimeRange::new(at(0), at(600_000));
    let mk = |i: u32, t: i64| notification(&wh, i, at(t));
    let delivered = mk(1, 1_000);
    let retrying = mk(2, 2_000);
    let failed_a = mk(3, 3_000);
    let failed_b = mk(4, 120_000); // after midnight
    let resent_ok = mk(5, 4_000); // failed, then a manual re-send succeeded
    let pending = mk(6, 5_000);
    let unrendered = render_failed(&wh, 7, at(6_000));
    let failed_outside = mk(8, 700_000);
    let failed_other_webhook = notification(&other, 9, at(3_000));
    let all = [
        &delivered,
        &retrying,
        &failed_a,
        &failed_b,
        &resent_ok,
        &pending,
        &unrendered,
        &failed_outside,
    ];
    store
        .append_notifications(&all.map(|n| n.clone()))
        .await
        .unwrap();
    store
        .append_notifications(std::slice::from_ref(&failed_other_webhook))
        .await
        .unwrap();
    let fail = |n: &Notification| {
        attempt(
            n,
            1,
            n.created_at + Duration::seconds(1),
            Outcome::Timeout,
            None,
        )
    };
    let mut manual = attempt(&resent_ok, 2, at(500_000), Outcome::Success, None);
    manual.trigger = Trigger::Manual;
    store
        .append_attempts(&[
            attempt(&delivered, 1, at(1_500), Outcome::Success, None),
            attempt(&retrying, 1, at(2_500), Outcome::HttpError, Some(at(9_000))),
            fail(&failed_a),
            fail(&failed_b),
            fail(&resent_ok),
            fail(&failed_outside),
            fail(&failed_other_webhook),
        ])
        .await
        .unwrap();
    store.append_attempts(&[manual]).await.unwrap();

    let q = ListQuery::new(&wh, range, 1);
    let pages = all_pages(store, q.clone(), true).await;
    assert_eq!(ids_of(&pages), vec![failed_b.id, failed_a.id]);
    for item in pages.iter().flat_map(|p| &p.items) {
        assert_eq!(item.state.status, Status::Failed);
    }
    // The query's status is ignored by list_exhausted.
    let pages = all_pages(store, q.with_status(Status::Delivered), true).await;
    assert_eq!(ids_of(&pages), vec![failed_b.id, failed_a.id]);

    // A failed notification re-sent successfully leaves the exhausted list.
    let mut again = attempt(&failed_a, 2, at(550_000), Outcome::Success, None);
    again.trigger = Trigger::Manual;
    store.append_attempts(&[again]).await.unwrap();
    let pages = all_pages(store, ListQuery::new(&wh, range, 10), true).await;
    assert_eq!(ids_of(&pages), vec![failed_b.id]);

    // And the status filter of `list` agrees with the projection.
    let by_status = |status| {
        let q = ListQuery::new(&wh, range, 3).with_status(status);
        async move { listed_ids(store, q).await }
    };
    assert_eq!(by_status(Status::Failed).await, vec![failed_b.id]);
    assert_eq!(
        by_status(Status::Delivered).await,
        vec![resent_ok.id, failed_a.id, delivered.id]
    );
    assert_eq!(by_status(Status::Retrying).await, vec![retrying.id]);
    assert_eq!(by_status(Status::Pending).await, vec![pending.id]);
    assert_eq!(by_status(Status::RenderFailed).await, vec![unrendered.id]);
    let everything = listed_ids(store, ListQuery::new(&wh, range, 4)).await;
    assert_eq!(everything.len(), 7);

    // The console's status counts agree with the listing.
    let counts = store.count_statuses(&wh, range, 10_000).await.unwrap();
    let want: std::collections::BTreeMap<&str, u64> = [
        ("delivered", 3),
        ("failed", 1),
        ("retrying", 1),
        ("pending", 1),
        ("render_failed", 1),
    ]
    .into();
    assert_eq!(counts.counts, want);
    assert_eq!((counts.scanned, counts.complete), (7, true));
    let other_counts = store.count_statuses(&other, range, 10_000).await.unwrap();
    assert_eq!(other_counts.counts, [("failed", 1)].into());
    // A bound below the total: either exact anyway, or marked incomplete
    // with lower bounds.
    let bounded = store.count_statuses(&wh, range, 2).await.unwrap();
    if bounded.complete {
        assert_eq!(bounded.counts, want);
    } else {
        assert!(bounded.scanned >= 2 && bounded.scanned < 7, "{bounded:?}");
        for (status, n) in &bounded.counts {
            assert!(*n <= want[status], "{bounded:?}");
        }
    }
}

async fn status_filter_pages_through_sparse_matches(store: &dyn NotificationStore) {
    let wh = unique_name("wh");
    // 40 rows, 8 delivered (ids ending in 0 or 7): matches spread over many pages.
    let all: Vec<_> = (0..40)
        .map(|i| notification(&wh, i, at(i as i64 * 3_000)))
        .collect();
    store.append_notifications(&all).await.unwrap();
    let delivered: Vec<_> = all
        .iter()
        .filter(|n| n.event_id.ends_with(['0', '7']))
        .collect();
    let attempts: Vec<_> = delivered
        .iter()
        .map(|n| {
            attempt(
                n,
                1,
                n.created_at + Duration::seconds(1),
                Outcome::Success,
                None,
            )
        })
        .collect();
    store.append_attempts(&attempts).await.unwrap();
    let q = ListQuery::new(&wh, day_range(), 2).with_status(Status::Delivered);
    let pages = all_pages(store, q, false).await;
    let mut want: Vec<_> = delivered.iter().map(|n| n.id).collect();
    want.reverse();
    assert_eq!(ids_of(&pages), want);
    for item in pages.iter().flat_map(|p| &p.items) {
        assert_eq!(item.state.status, Status::Delivered);
        assert_eq!(item.state.attempts, 1);
    }
    let pending = listed_ids(
        store,
        ListQuery::new(&wh, day_range(), 7).with_status(Status::Pending),
    )
    .await;
    assert_eq!(pending.len(), 40 - delivered.len());
}

async fn response_excerpts_are_bounded_and_marked(store: &dyn NotificationStore) {
    let wh = unique_name("wh");
    let n = notification(&wh, 1, at(0));
    store
        .append_notifications(std::slice::from_ref(&n))
        .await
        .unwrap();
    let mut a = attempt(&n, 1, at(1_000), Outcome::HttpError, Some(at(2_000)));
    // 3-byte chars so that the 4 KiB cut lands inside one.
    a.response_excerpt = Some("€".repeat(10_000));
    store
        .append_attempts(std::slice::from_ref(&a))
        .await
        .unwrap();
    let rec = store.get(n.id).await.unwrap().unwrap();
    let stored = rec.attempts[0].response_excerpt.clone().unwrap();
    let kept = StoreLimits::DEFAULT_MAX_RESPONSE_EXCERPT_BYTES / 3 * 3;
    assert_eq!(
        stored,
        format!(
            "{}…[truncated {} bytes]",
            "€".repeat(kept / 3),
            30_000 - kept
        )
    );
}

async fn bad_attempts_are_refused(store: &dyn NotificationStore) {
    let wh = unique_name("wh");
    let ghost = notification(&wh, 1, at(0));
    let err = store
        .append_attempts(&[attempt(&ghost, 1, at(1), Outcome::Success, None)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(id) if id == ghost.id),
        "{err}"
    );
    assert!(!err.is_retriable());

    let broken = render_failed(&wh, 2, at(0));
    store
        .append_notifications(std::slice::from_ref(&broken))
        .await
        .unwrap();
    let err = store
        .append_attempts(&[attempt(&broken, 1, at(1), Outcome::Success, None)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    let rec = store.get(broken.id).await.unwrap().unwrap();
    assert_eq!(rec.state.status, Status::RenderFailed);
    assert!(rec.attempts.is_empty());
    assert_eq!(
        store.state(broken.id).await.unwrap().unwrap().status,
        Status::RenderFailed
    );
    assert!(store.get(ghost.id).await.unwrap().is_none());
    assert!(store.state(ghost.id).await.unwrap().is_none());
}

// --------------------------------------------------------------- adapters

fn temp_db(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}.sqlite", unique_name(test)))
}

async fn sqlite_store(test: &str) -> Arc<SqliteStore> {
    let store = SqliteStore::open(SqliteConfig::new(temp_db(test)), StoreLimits::default())
        .await
        .expect("open sqlite store");
    Arc::new(store)
}

/// One keyspace per test binary run: DDL on a 2-core Cassandra is slow.
static KEYSPACE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

async fn cql_store(test: &str) -> Option<Arc<CqlStore>> {
    let node = cql_node(test)?;
    let keyspace = KEYSPACE
        .get_or_init(|| async { unique_name("herald_conf") })
        .await;
    let config = CqlConfig::new(vec![node], keyspace.clone());
    let session = Arc::new(connect_session(&config).await.expect("connect"));
    static MIGRATED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    MIGRATED
        .get_or_init(|| async {
            let rf1 = Replication::Simple {
                replication_factor: 1,
            };
            migrate(&session, keyspace, &rf1).await.expect("migrate");
            // Idempotent: a second run is harmless.
            migrate(&session, keyspace, &rf1)
                .await
                .expect("migrate again");
            // The optional compaction file must at least be valid CQL.
            apply_optional_compaction(&session, keyspace)
                .await
                .expect("optional compaction");
        })
        .await;
    Some(Arc::new(
        CqlStore::new(session, &config, StoreLimits::default())
            .await
            .expect("prepare"),
    ))
}

/// Instantiate test bodies for both adapters, in modules `$sqlite` and
/// `$cql`, each store passed through `$wrap` first.
macro_rules! conformance {
    ($sqlite:ident, $cql:ident, $wrap:ident; $($name:ident),+ $(,)?) => {
        mod $sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let store = super::sqlite_store(stringify!($name)).await;
                    super::$name(&*super::$wrap(store)).await;
                }
            )+
        }
        mod $cql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(store) = super::cql_store(stringify!($name)).await else {
                        return;
                    };
                    super::$name(&*super::$wrap(store)).await;
                }
            )+
        }
    };
}

/// The store as it is: attempts through the checked `append_attempts`.
fn checked<S>(store: Arc<S>) -> Arc<S> {
    store
}

/// The store behind [`Recorded`].
fn recorded<S>(store: Arc<S>) -> Arc<Recorded<S>> {
    Arc::new(Recorded(store))
}

/// A store whose `append_attempts` records each attempt as delivery does:
/// [`NotificationStore::record_attempt`] with the notification's webhook
/// and `created_at` (read here, as the job would carry them).
struct Recorded<S>(Arc<S>);

#[async_trait::async_trait]
impl<S: NotificationStore> NotificationStore for Recorded<S> {
    async fn append_notifications(
        &self,
        batch: &[Notification],
    ) -> herald_store::Result<Vec<Accepted>> {
        self.0.append_notifications(batch).await
    }
    async fn append_attempts(&self, batch: &[Attempt]) -> herald_store::Result<()> {
        for a in batch {
            let Some(record) = self.0.get(a.notification_id).await? else {
                return Err(StoreError::NotFound(a.notification_id));
            };
            let of = AttemptOf::notification(&record.notification);
            self.0.record_attempt(a, of, None).await?;
        }
        Ok(())
    }
    async fn attempts(&self, id: NotificationId) -> herald_store::Result<Vec<Attempt>> {
        self.0.attempts(id).await
    }
    async fn get(
        &self,
        id: NotificationId,
    ) -> herald_store::Result<Option<herald_store::NotificationRecord>> {
        self.0.get(id).await
    }
    async fn state(&self, id: NotificationId) -> herald_store::Result<Option<NotificationState>> {
        self.0.state(id).await
    }
    async fn list(&self, query: &ListQuery) -> herald_store::Result<Page> {
        self.0.list(query).await
    }
    async fn list_exhausted(&self, query: &ListQuery) -> herald_store::Result<Page> {
        self.0.list_exhausted(query).await
    }
    async fn count_statuses(
        &self,
        webhook_id: &str,
        range: TimeRange,
        bound: u64,
    ) -> herald_store::Result<herald_store::StatusCounts> {
        self.0.count_statuses(webhook_id, range, bound).await
    }
}

// The conformance suite again, with every attempt written the way the
// delivery pipeline writes it: `NotificationStore::record_attempt` with
// what the job knows of the notification, which lets the CQL adapter write
// without reading first. `bad_attempts_are_refused` is not among them:
// that path trusts the job and checks nothing.
conformance!(sqlite_recorded, cql_recorded, recorded;
    reappending_a_notification_stores_it_once,
    attempts_come_back_ordered_by_time,
    state_converges_whatever_the_arrival_order,
    a_failed_manual_resend_changes_no_status,
    a_duplicate_failure_after_a_delivery_leaves_it_delivered,
    pages_never_skip_or_repeat_a_row,
    time_range_is_from_inclusive_to_exclusive,
    large_bodies_round_trip_byte_identical,
    unicode_round_trips,
    list_exhausted_returns_exactly_the_failed_ones,
    status_filter_pages_through_sparse_matches,
    response_excerpts_are_bounded_and_marked,
);

conformance!(sqlite, cql, checked;
    reappending_a_notification_stores_it_once,
    attempts_come_back_ordered_by_time,
    state_converges_whatever_the_arrival_order,
    a_failed_manual_resend_changes_no_status,
    a_duplicate_failure_after_a_delivery_leaves_it_delivered,
    pages_never_skip_or_repeat_a_row,
    time_range_is_from_inclusive_to_exclusive,
    large_bodies_round_trip_byte_identical,
    unicode_round_trips,
    list_exhausted_returns_exactly_the_failed_ones,
    status_filter_pages_through_sparse_matches,
    response_excerpts_are_bounded_and_marked,
    bad_attempts_are_refused,
);

// --------------------------------------------------------- CQL-only extras

/// The requests one delivered notification costs, statement by statement,
/// as `herald_store_requests_total` reports them: the figure the write-path
/// work is measured by.
#[tokio::test]
async fn cql_counts_every_request_by_statement() {
    let Some(store) = cql_store("cql_counts_every_request_by_statement").await else {
        return;
    };
    let sent = |store: &CqlStore| -> std::collections::BTreeMap<&'static str, u64> {
        store
            .requests()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    assert!(sent(&store).is_empty());
    let wh = unique_name("wh");
    let n = notification(&wh, 1, at(0));
    store
        .append_notifications(std::slice::from_ref(&n))
        .await
        .unwrap();
    // Appended: one read for the batch's heads, one batch for the record,
    // its initial state and its index entry.
    assert_eq!(
        sent(&store),
        [("append_batch", 1), ("select_heads", 1)].into()
    );
    // Delivered as the pipeline records it: one single-partition batch.
    let of = AttemptOf::notification(&n);
    let delivered = attempt(&n, 1, at(1_000), Outcome::Success, None);
    store.record_attempt(&delivered, of, None).await.unwrap();
    let three = [
        ("append_batch", 1),
        ("attempt_delivered_batch", 1),
        ("select_heads", 1),
    ];
    assert_eq!(
        sent(&store),
        three.into(),
        "a delivered notification costs 3"
    );
    assert_eq!(
        store.state(n.id).await.unwrap().unwrap().status,
        Status::Delivered
    );

    // The checked path reads the head and the state first.
    let store = cql_store("cql_counts_every_request_by_statement")
        .await
        .unwrap();
    let n = notification(&wh, 2, at(0));
    store
        .append_notifications(std::slice::from_ref(&n))
        .await
        .unwrap();
    store
        .append_attempts(&[attempt(
            &n,
            1,
            at(1_000),
            Outcome::HttpError,
            Some(at(9_000)),
        )])
        .await
        .unwrap();
    assert_eq!(
        sent(&store),
        [
            ("append_batch", 1),
            ("attempt_state_batch", 1),
            ("select_head", 1),
            ("select_heads", 1),
            ("select_state", 1),
        ]
        .into()
    );

    // A batch of 150 (one of them twice) reads its heads in two requests; a
    // replay reads the stored record and state, and rewrites the index
    // entry and the initial state.
    let store = cql_store("cql_counts_every_request_by_statement")
        .await
        .unwrap();
    let mut batch: Vec<_> = (10..160).map(|i| notification(&wh, i, at(0))).collect();
    batch.push(batch[0].clone());
    let found = store.append_notifications(&batch).await.unwrap();
    assert_eq!(found.iter().filter(|a| **a == Accepted::New).count(), 150);
    assert!(
        matches!(found[150], Accepted::Existing { .. }),
        "{:?}",
        found[150]
    );
    assert_eq!(
        sent(&store),
        [("append_batch", 150), ("select_heads", 2)].into()
    );
    store.append_notifications(&batch[..1]).await.unwrap();
    assert_eq!(
        sent(&store),
        [
            ("append_batch", 150),
            ("insert_by_webhook", 1),
            ("insert_initial_state", 1),
            ("select_heads", 3),
            ("select_notification", 1),
            ("select_state", 1),
        ]
        .into()
    );

    // A record above the batched size goes next to its index entry.
    let store = cql_store("cql_counts_every_request_by_statement")
        .await
        .unwrap();
    let mut big = notification(&wh, 200, at(0));
    big.content = NotificationContent::Rendered(request("x".repeat(8 * 1024)));
    store
        .append_notifications(std::slice::from_ref(&big))
        .await
        .unwrap();
    assert_eq!(
        sent(&store),
        [
            ("append_record_batch", 1),
            ("insert_by_webhook", 1),
            ("select_heads", 1),
        ]
        .into()
    );
    let listed = listed_ids(&*store, ListQuery::new(&wh, day_range(), 500)).await;
    assert_eq!(listed.len(), 153, "every append is listed once");
}

/// The CQL count pages through the listing, so a bound below the total
/// stops it: the counts are then marked as lower bounds.
#[tokio::test]
async fn cql_counts_stop_at_their_bound() {
    let Some(store) = cql_store("cql_counts_stop_at_their_bound").await else {
        return;
    };
    let wh = unique_name("wh");
    let all: Vec<_> = (0..5).map(|i| notification(&wh, i, at(i as i64))).collect();
    store.append_notifications(&all).await.unwrap();
    let bounded = store.count_statuses(&wh, day_range(), 2).await.unwrap();
    assert_eq!(
        (
            bounded.scanned,
            bounded.complete,
            bounded.counts.get("pending")
        ),
        (2, false, Some(&2)),
        "{bounded:?}"
    );
    let whole = store.count_statuses(&wh, day_range(), 10).await.unwrap();
    assert_eq!((whole.scanned, whole.complete), (5, true), "{whole:?}");
}

// ------------------------------------------------------ SQLite-only extras

/// A file written by an older version is upgraded in place when opened,
/// with every row: the upgraded store answers every read exactly as a store
/// that recorded the same history in the current schema, and goes on
/// recording. The old file is made from the version-2 schema
/// (`fixtures/sqlite_schema_v2.sql`; version 1 is the same without
/// `status_ts`), filled with the current store's rows in the old layout.
#[tokio::test]
async fn sqlite_files_of_older_versions_are_upgraded_with_every_row() {
    for version in [1, 2] {
        let wh = unique_name("wh");
        let current_path = temp_db(&format!("upgrade_current_v{version}"));
        let current = SqliteStore::open(SqliteConfig::new(&current_path), StoreLimits::default())
            .await
            .unwrap();
        let n: Vec<_> = (0..6)
            .map(|i| notification(&wh, i, at(i as i64 * 1_000)))
            .collect();
        let unrendered = render_failed(&wh, 9, at(7_000));
        let mut all = n.clone();
        all.push(unrendered.clone());
        current.append_notifications(&all).await.unwrap();
        let mut manual = attempt(&n[3], 2, at(30_000), Outcome::Timeout, None);
        manual.trigger = Trigger::Manual;
        current
            .append_attempts(&[
                attempt(&n[0], 1, at(10_000), Outcome::Success, None),
                attempt(&n[1], 1, at(11_000), Outcome::HttpError, Some(at(90_000))),
                attempt(&n[2], 1, at(12_000), Outcome::HttpError, Some(at(20_000))),
                attempt(&n[2], 2, at(20_000), Outcome::Success, None),
                attempt(&n[3], 1, at(13_000), Outcome::Timeout, None),
                manual,
            ])
            .await
            .unwrap();
        current.queue_resend(n[3].id).await.unwrap();

        // The same history, as the old version stored it.
        let old_path = temp_db(&format!("upgrade_old_v{version}"));
        let mut ddl = include_str!("../fixtures/sqlite_schema_v2.sql").to_owned();
        let mut state_cols = "s.status, s.attempts, s.last_attempt_at, s.next_attempt_at, \
             s.write_ts, s.status_ts";
        if version == 1 {
            ddl = ddl.replace(
                "INTEGER NOT NULL,  -- emulates the CQL write time of attempts, last_attempt_at\n    status_ts       INTEGER NOT NULL",
                "INTEGER NOT NULL",
            );
            assert!(!ddl.contains("status_ts       INTEGER"), "v1 fixture");
            state_cols = "s.status, s.attempts, s.last_attempt_at, s.next_attempt_at, s.write_ts";
        }
        let old = rusqlite::Connection::open(&old_path).unwrap();
        old.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; {ddl} \
             ATTACH DATABASE '{}' AS cur; \
             INSERT INTO notifications SELECT notification_id, webhook_id, event_source, \
               event_id, event_type, subject, event_time, created_at, template_hash, content \
               FROM cur.notifications; \
             INSERT INTO notification_state SELECT n.notification_id, {state_cols} \
               FROM cur.notification_state s JOIN cur.notifications n ON n.seq = s.seq; \
             INSERT INTO attempts SELECT n.notification_id, a.started_at, a.attempt_id, \
               a.attempt_no, a.trigger, a.duration_ms, a.outcome, a.http_status, a.error, \
               a.response_excerpt, a.next_attempt_at \
               FROM cur.attempts a JOIN cur.notifications n ON n.seq = a.seq; \
             INSERT INTO resend_requests SELECT * FROM cur.resend_requests; \
             DETACH DATABASE cur; PRAGMA user_version = {version};",
            current_path.display()
        ))
        .unwrap();
        let copied: i64 = old
            .query_row("SELECT count(*) FROM attempts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(copied, 6, "the old file holds the history");
        drop(old);

        let upgraded = SqliteStore::open(SqliteConfig::new(&old_path), StoreLimits::default())
            .await
            .expect("an old file opens");
        for x in &all {
            assert_eq!(
                upgraded.get(x.id).await.unwrap(),
                current.get(x.id).await.unwrap(),
                "v{version}: {}",
                x.event_id
            );
            assert_eq!(
                upgraded.state(x.id).await.unwrap(),
                current.state(x.id).await.unwrap()
            );
            assert_eq!(
                upgraded.attempts(x.id).await.unwrap(),
                current.attempts(x.id).await.unwrap()
            );
        }
        assert_eq!(
            upgraded.get(n[0].id).await.unwrap().unwrap().attempts.len(),
            1
        );
        let stores: [&dyn NotificationStore; 2] = [&upgraded, &current];
        let mut seen = Vec::new();
        for store in stores {
            let q = ListQuery::new(&wh, day_range(), 2);
            let everything = all_pages(store, q.clone(), false).await;
            let failed = all_pages(store, q.clone(), true).await;
            let retrying = all_pages(store, q.with_status(Status::Retrying), false).await;
            let counts = store.count_statuses(&wh, day_range(), 100).await.unwrap();
            seen.push((
                everything
                    .into_iter()
                    .flat_map(|p| p.items)
                    .collect::<Vec<_>>(),
                ids_of(&failed),
                ids_of(&retrying),
                counts,
            ));
        }
        assert_eq!(seen[0], seen[1], "v{version}: listings");
        assert_eq!(seen[0].0.len(), 7);
        assert_eq!(seen[0].1, vec![n[3].id], "exhausted");
        assert_eq!(seen[0].2, vec![n[1].id], "retrying");
        assert_eq!(
            upgraded.list_due(at(100_000), 10).await.unwrap(),
            current.list_due(at(100_000), 10).await.unwrap()
        );
        assert_eq!(upgraded.list_due(at(100_000), 10).await.unwrap().len(), 1);
        assert_eq!(
            upgraded.list_unattempted(at(100_000), 10).await.unwrap(),
            current.list_unattempted(at(100_000), 10).await.unwrap()
        );
        assert_eq!(
            upgraded.pending_resends().await.unwrap(),
            vec![(1, n[3].id)]
        );

        // It goes on recording: an old notification's next attempt, and a
        // new notification after the old ones.
        upgraded
            .append_attempts(&[attempt(&n[1], 2, at(90_000), Outcome::Success, None)])
            .await
            .unwrap();
        assert_eq!(
            upgraded.state(n[1].id).await.unwrap().unwrap().status,
            Status::Delivered
        );
        let newer = notification(&wh, 50, at(8_000));
        let found = upgraded
            .append_notifications(std::slice::from_ref(&newer))
            .await
            .unwrap();
        assert_eq!(found, vec![Accepted::New]);
        let first = upgraded
            .list(&ListQuery::new(&wh, day_range(), 1))
            .await
            .unwrap();
        assert_eq!(first.items[0].notification, newer);
        drop(upgraded);

        let file = rusqlite::Connection::open(&old_path).unwrap();
        let v: i64 = file
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 3);
        let leftovers: i64 = file
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name LIKE 'v2_%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(leftovers, 0, "the old tables are gone");
    }
}

#[tokio::test]
async fn sqlite_due_retries_and_unattempted_notifications() {
    let store = sqlite_store("due").await;
    let wh = unique_name("wh");
    let due = notification(&wh, 1, at(0));
    let later = notification(&wh, 2, at(0));
    let fresh = notification(&wh, 3, at(50_000));
    let old_pending = notification(&wh, 4, at(0));
    store
        .append_notifications(&[
            due.clone(),
            later.clone(),
            fresh.clone(),
            old_pending.clone(),
        ])
        .await
        .unwrap();
    store
        .append_attempts(&[
            attempt(&due, 1, at(1_000), Outcome::Timeout, Some(at(10_000))),
            attempt(&later, 1, at(1_000), Outcome::Timeout, Some(at(99_000))),
        ])
        .await
        .unwrap();
    let got = store.list_due(at(10_000), 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, due);
    assert_eq!(got[0].1.status, Status::Retrying);
    assert_eq!(store.list_due(at(99_000), 10).await.unwrap().len(), 2);
    assert_eq!(store.list_due(at(99_000), 1).await.unwrap()[0].0.id, due.id);

    let unattempted = store.list_unattempted(at(10_000), 10).await.unwrap();
    let ids: Vec<_> = unattempted.iter().map(|n| n.id).collect();
    let mut want = vec![old_pending.id];
    assert_eq!(ids, want);
    want.push(fresh.id);
    let ids: Vec<_> = store
        .list_unattempted(at(60_000), 10)
        .await
        .unwrap()
        .iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids.len(), 2);
}

#[tokio::test]
async fn sqlite_appends_are_durable_across_reopen() {
    let path = temp_db("reopen");
    let wh = unique_name("wh");
    let n = notification(&wh, 1, at(0));
    {
        let store = SqliteStore::open(SqliteConfig::new(&path), StoreLimits::default())
            .await
            .unwrap();
        store
            .append_notifications(std::slice::from_ref(&n))
            .await
            .unwrap();
        store
            .append_attempts(&[attempt(&n, 1, at(1_000), Outcome::Success, None)])
            .await
            .unwrap();
    }
    let store = SqliteStore::open(SqliteConfig::new(&path), StoreLimits::default())
        .await
        .unwrap();
    let rec = store.get(n.id).await.unwrap().unwrap();
    assert_eq!(rec.notification, n);
    assert_eq!(rec.state.status, Status::Delivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_appends_are_group_committed_without_loss() {
    let store = sqlite_store("group").await;
    let wh = unique_name("wh");
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            let n = notification(&wh, i, at(i as i64));
            tokio::spawn(async move {
                store
                    .append_notifications(std::slice::from_ref(&n))
                    .await
                    .unwrap();
                store
                    .append_attempts(&[attempt(&n, 1, at(100_000), Outcome::Success, None)])
                    .await
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let ids = listed_ids(
        &*store,
        ListQuery::new(&wh, day_range(), 1000).with_status(Status::Delivered),
    )
    .await;
    assert_eq!(ids.len(), 200);
}

#[tokio::test]
async fn sqlite_one_bad_append_does_not_fail_its_group() {
    let store = sqlite_store("bad_in_group").await;
    let wh = unique_name("wh");
    let good = notification(&wh, 1, at(0));
    let ghost = notification(&wh, 2, at(0));
    store
        .append_notifications(std::slice::from_ref(&good))
        .await
        .unwrap();
    let bad_attempt = [attempt(&ghost, 1, at(1), Outcome::Success, None)];
    let good_attempt = [attempt(&good, 1, at(1), Outcome::Success, None)];
    let (bad, ok) = tokio::join!(
        store.append_attempts(&bad_attempt),
        store.append_attempts(&good_attempt),
    );
    assert!(matches!(bad, Err(StoreError::NotFound(_))));
    ok.unwrap();
    assert_eq!(
        store.state(good.id).await.unwrap().unwrap().status,
        Status::Delivered
    );
}
