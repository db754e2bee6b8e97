//! GetContainerEvents: two clients see the same events, in order, with the statuses kubelet's
//! evented PLEG reads; a container that exits on its own is reported.

use std::time::Duration;

use crid_proto::cri;
use crid_proto::cri::ContainerEventType as Event;
use crid_tests::harness::pods::PodFixture;
use tokio_stream::StreamExt;

type Stream = tonic::Streaming<cri::ContainerEventResponse>;

async fn next(stream: &mut Stream) -> cri::ContainerEventResponse {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("an event within 20 s")
        .expect("stream open")
        .expect("event")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_clients_see_the_same_events_in_order() {
    let mut fx = PodFixture::start("").await;
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut client = fx.crid.runtime().await;
        streams.push(
            client
                .get_container_events(cri::GetEventsRequest::default())
                .await
                .expect("subscribe")
                .into_inner(),
        );
    }
    let pod = fx.pod_config("events");
    let pod_id = fx.run_pod(pod.clone()).await;
    let long = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("long", &["sleep", "1000"]),
        )
        .await;
    let short = fx
        .start_container(&pod_id, &pod, fx.container_config("short", &["true"]))
        .await;
    fx.wait_exited(&short, Duration::from_secs(20)).await;
    fx.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: long.clone(),
            timeout: 0,
        })
        .await
        .expect("stop");
    fx.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: long.clone(),
        })
        .await
        .expect("remove");
    fx.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("stop pod");
    fx.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("remove pod");
    let expected = vec![
        (pod_id.clone(), Event::ContainerCreatedEvent),
        (pod_id.clone(), Event::ContainerStartedEvent),
        (long.clone(), Event::ContainerCreatedEvent),
        (long.clone(), Event::ContainerStartedEvent),
        (short.clone(), Event::ContainerCreatedEvent),
        (short.clone(), Event::ContainerStartedEvent),
        (short.clone(), Event::ContainerStoppedEvent),
        (long.clone(), Event::ContainerStoppedEvent),
        (long.clone(), Event::ContainerDeletedEvent),
        (pod_id.clone(), Event::ContainerStoppedEvent),
        (short.clone(), Event::ContainerDeletedEvent),
        (pod_id.clone(), Event::ContainerDeletedEvent),
    ];
    let mut seen = Vec::new();
    for stream in streams.iter_mut() {
        let mut got = Vec::new();
        for _ in 0..expected.len() {
            let event = next(stream).await;
            got.push((
                event.container_id.clone(),
                Event::try_from(event.container_event_type).expect("type"),
                event,
            ));
        }
        seen.push(got);
    }
    for got in &seen {
        let kinds: Vec<(String, Event)> = got
            .iter()
            .map(|(id, kind, _)| (id.clone(), *kind))
            .collect();
        // The short container may exit before the long one starts being reported; compare
        // per object, in order.
        for object in [&pod_id, &long, &short] {
            let want: Vec<Event> = expected
                .iter()
                .filter(|(id, _)| id == object)
                .map(|(_, k)| *k)
                .collect();
            let have: Vec<Event> = kinds
                .iter()
                .filter(|(id, _)| id == object)
                .map(|(_, k)| *k)
                .collect();
            assert_eq!(have, want, "events of {object}");
        }
    }
    assert_eq!(
        seen[0]
            .iter()
            .map(|(id, kind, _)| (id.clone(), *kind))
            .collect::<Vec<_>>(),
        seen[1]
            .iter()
            .map(|(id, kind, _)| (id.clone(), *kind))
            .collect::<Vec<_>>(),
        "both clients see the same order"
    );
    // The stopped event of the short container carries its exited status.
    let (_, _, stopped) = seen[0]
        .iter()
        .find(|(id, kind, _)| id == &short && *kind == Event::ContainerStoppedEvent)
        .expect("stopped event");
    let status = stopped
        .containers_statuses
        .iter()
        .find(|s| s.id == short)
        .expect("status of the stopped container");
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(
        stopped.pod_sandbox_status.as_ref().map(|p| p.id.clone()),
        Some(pod_id.clone())
    );
    fx.finish().await;
}
