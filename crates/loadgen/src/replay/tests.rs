use super::*;
use otstream_model::{IdentityHints, Transport};

fn message(n: u8) -> RawMessage {
    RawMessage {
        received_at: 0,
        transport: Transport::Http,
        hints: IdentityHints::default(),
        remote_addr: None,
        payload: vec![n],
    }
}

#[tokio::test]
async fn the_dispatcher_hands_over_no_earlier_than_a_millisecond_before_due() {
    let start = Instant::now();
    let dues = [0, 30, 60].map(|ms| start + Duration::from_millis(ms));
    let (chunks, chunks_rx) = mpsc::channel(4);
    let (conn, mut conn_rx) = mpsc::channel(16);
    let chunk = dues
        .iter()
        .enumerate()
        .map(|(i, &due)| {
            let msg = message(u8::try_from(i).unwrap());
            (
                0,
                Job {
                    msg,
                    due: Some(due),
                },
            )
        })
        .collect();
    chunks.send(chunk).await.unwrap();
    drop(chunks);
    let dispatched = dispatch(chunks_rx, vec![conn], CancellationToken::new());
    assert_eq!(dispatched.await, Ok(()));
    for (i, due) in dues.into_iter().enumerate() {
        let job = conn_rx.recv().await.unwrap();
        assert_eq!(job.msg.payload, [u8::try_from(i).unwrap()], "in order");
        let since = job.due.unwrap();
        assert!(since <= due, "latency starts at the due time or before");
        assert!(
            since + EARLY >= due,
            "message {i} handed over {:?} early",
            due - since
        );
    }
    assert!(start.elapsed() + EARLY >= Duration::from_millis(60));
}

#[tokio::test]
async fn a_connection_that_ended_ends_the_dispatcher_with_an_error() {
    let (chunks, chunks_rx) = mpsc::channel(4);
    let (conn, conn_rx) = mpsc::channel(16);
    drop(conn_rx);
    chunks
        .send(vec![(
            0,
            Job {
                msg: message(0),
                due: None,
            },
        )])
        .await
        .unwrap();
    drop(chunks);
    let dispatched = dispatch(chunks_rx, vec![conn], CancellationToken::new()).await;
    assert_eq!(dispatched, Err("a connection ended early".to_owned()));
}

#[tokio::test]
async fn a_slow_input_is_passed_on_message_by_message() {
    // The input gives one message, then waits for the test: the message
    // must reach the dispatcher's channel before the input goes on.
    let (more, waiting) = std::sync::mpsc::channel::<()>();
    let input = std::iter::once(Ok(message(1))).chain(std::iter::from_fn(move || {
        waiting.recv().ok()?;
        Some(Ok(message(2)))
    }));
    let (chunks, mut chunks_rx) = mpsc::channel(4);
    let reader = std::thread::spawn(move || {
        read(
            input,
            Pacing::Max,
            Rewrite::default(),
            2,
            Instant::now(),
            &CancellationToken::new(),
            &AtomicU64::new(0),
            &chunks,
        );
    });
    let soon = Duration::from_secs(5);
    let first = tokio::time::timeout(soon, chunks_rx.recv())
        .await
        .expect("the first message was held back")
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1.msg.payload, [1]);
    more.send(()).unwrap();
    drop(more);
    let second = chunks_rx.recv().await.unwrap();
    assert_eq!((second[0].0, &second[0].1.msg.payload[..]), (0, &[2][..]));
    assert!(chunks_rx.recv().await.is_none());
    reader.join().unwrap();
}
