//! List answers: the Skyport shape when no page is asked for, gzip when the client
//! accepts it (and the same array inside), `?page=&perPage=` slices of the same
//! ordered list with `X-Total-Count` and `Link`, bad pages refused, and never a
//! list older than a write the caller saw answered.

use std::io::Read as _;
use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::common::FakeNode;
use crate::server::TestServer;

/// GET `path` with the API key and `accept-encoding`; status, headers, body bytes.
async fn get(
    srv: &TestServer,
    path: &str,
    encoding: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = srv.raw("GET", path).header("x-api-key", &srv.key);
    if let Some(e) = encoding {
        req = req.header("accept-encoding", e);
    }
    let resp = req.send().await.expect("request sent");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.bytes().await.expect("body").to_vec())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).map_or("", |v| v.to_str().expect("ascii"))
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("an array")
        .iter()
        .map(|i| i["Id"].as_str().expect("Id").to_owned())
        .collect()
}

async fn deploy(srv: &TestServer, node: &str, port: i32) -> String {
    let a = srv
        .call(
            "POST",
            "/api/instances/deploy",
            Some(json!({
                "image": "ghcr.io/skyportlabs/images:java21", "memory": "512", "cpu": 1,
                "ports": port.to_string(), "primary": port.to_string(), "nodeId": node, "name": "Paged", "user": "pager",
            })),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    a.body["Id"].as_str().expect("Id").to_owned()
}

#[tokio::test]
async fn lists_are_paged_and_gzipped_and_never_stale() {
    let srv = TestServer::start("api-lists").await;
    srv.user("pager").await;
    let fake = FakeNode::create(&srv.client).await;
    let node = srv.node(&fake.ip).await;
    for port in 26000..26005 {
        deploy(&srv, &node, port).await;
    }

    // Two reads are compared byte for byte below: first let the controller bring
    // every instance to Running, after which nothing changes them.
    crate::common::eventually(Duration::from_secs(60), "5 instances Running", || async {
        let (_, _, body) = get(&srv, "/api/instances", None).await;
        let list: Value = serde_json::from_slice(&body).expect("JSON");
        list.as_array()
            .is_some_and(|l| l.len() == 5 && l.iter().all(|i| i["State"] == "Running"))
    })
    .await;

    // The whole list, as Skyport answers it: an array of every instance, by id.
    let (status, h, plain) = get(&srv, "/api/instances", None).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-encoding"), "", "not asked for gzip");
    assert_eq!(header(&h, "vary"), "accept-encoding");
    assert_eq!(
        header(&h, "content-length"),
        plain.len().to_string(),
        "sent from shared chunks, with its length"
    );
    let whole: Value = serde_json::from_slice(&plain).expect("JSON");
    let all = ids(&whole);
    assert_eq!(all.len(), 5);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "ordered by id, so pages are stable");

    // gzip when accepted: the same bytes inside.
    let (status, h, gz) = get(&srv, "/api/instances", Some("br, gzip;q=0.8")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-encoding"), "gzip");
    assert_eq!(gunzip(&gz), plain);
    let (_, h, _) = get(&srv, "/api/instances", Some("gzip;q=0")).await;
    assert_eq!(header(&h, "content-encoding"), "", "q=0 refuses gzip");

    // Pages: slices of the same list, with the total and the way on.
    let mut paged = Vec::new();
    for page in 1..=3 {
        let (status, h, body) =
            get(&srv, &format!("/api/instances?page={page}&perPage=2"), None).await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "x-total-count"), "5");
        let link = header(&h, "link");
        assert!(
            link.contains("</api/instances?page=3&perPage=2>; rel=\"last\""),
            "{link}"
        );
        assert_eq!(
            link.contains(&format!(
                "</api/instances?page={}&perPage=2>; rel=\"next\"",
                page + 1
            )),
            page < 3,
            "{link}"
        );
        let items = ids(&serde_json::from_slice(&body).expect("JSON"));
        assert_eq!(items.len(), if page < 3 { 2 } else { 1 });
        paged.extend(items);
    }
    assert_eq!(paged, all);
    let (_, _, past) = get(&srv, "/api/instances?page=4&perPage=2", None).await;
    assert_eq!(past, b"[]");
    let (_, h, body) = get(&srv, "/api/instances?page=1", None).await;
    assert_eq!(
        ids(&serde_json::from_slice(&body).expect("JSON")),
        all,
        "perPage defaults to 100"
    );
    assert!(header(&h, "link").contains("perPage=100"));

    // Bad pages: a JSON 400.
    for q in [
        "page=0",
        "page=-1",
        "page=x",
        "perPage=0",
        "perPage=1001",
        "page=1.5",
        "page=1&page=2",
    ] {
        let a = srv.call("GET", &format!("/api/instances?{q}"), None).await;
        assert_eq!(a.status, 400, "{q}: {a:?}");
        assert!(
            a.body["error"]
                .as_str()
                .is_some_and(|e| e.contains("perPage")),
            "{q}: {a:?}"
        );
    }

    // Users page the same way.
    for u in ["pager-2", "pager-3"] {
        srv.user(u).await;
    }
    let (_, h, body) = get(&srv, "/api/users?page=2&perPage=2", None).await;
    assert_eq!(header(&h, "x-total-count"), "3");
    let users: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(users.as_array().map(Vec::len), Some(1), "{users}");

    // A changed instance is made again, not copied from the last list.
    let first = &all[0];
    let a = srv
        .call("POST", &format!("/api/instances/suspend/{first}"), None)
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let (_, _, gz) = get(&srv, "/api/instances", Some("gzip")).await;
    let list: Value = serde_json::from_slice(&gunzip(&gz)).expect("JSON");
    assert_eq!(list[0]["suspended"], json!(true), "a stale copy of {first}");
    let (_, _, body) = get(&srv, "/api/instances?perPage=1", None).await;
    let page: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(page[0]["suspended"], json!(true), "a stale page");

    // A write answered is in the next list, gzip or not, whole or paged.
    let sixth = deploy(&srv, &node, 26005).await;
    let (_, _, gz) = get(&srv, "/api/instances", Some("gzip")).await;
    let list: Value = serde_json::from_slice(&gunzip(&gz)).expect("JSON");
    assert!(ids(&list).contains(&sixth), "gzip list is stale");
    let (_, h, _) = get(&srv, "/api/instances?perPage=1000", None).await;
    assert_eq!(header(&h, "x-total-count"), "6");
    let removed = srv
        .call(
            "DELETE",
            "/api/instance/delete",
            Some(json!({ "id": sixth })),
        )
        .await;
    assert_eq!(removed.status, 201, "{removed:?}");
    let (_, _, plain) = get(&srv, "/api/instances", None).await;
    let list: Value = serde_json::from_slice(&plain).expect("JSON");
    assert!(!ids(&list).contains(&sixth), "plain list is stale");

    // A Node renamed (with kubectl, say) shows under its new name in every
    // instance: its spec is part of each item's rendering, not only its status.
    let nodes: Api<berth::crd::Node> = Api::namespaced(srv.client.clone(), &srv.ns);
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "displayName": "Renamed" } })),
        )
        .await
        .expect("rename the node");
    crate::common::eventually(
        Duration::from_secs(10),
        "the new node name listed",
        || async {
            let (_, _, body) = get(&srv, "/api/instances", None).await;
            let list: Value = serde_json::from_slice(&body).expect("JSON");
            list.as_array()
                .is_some_and(|l| l.iter().all(|i| i["Node"]["name"] == "Renamed"))
        },
    )
    .await;
    fake.delete(&srv.client).await;
    srv.finish().await;
}
