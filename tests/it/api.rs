//! The REST API against the real control plane: every endpoint's success and error
//! paths with exact status codes and shapes, the objects written (or not) in the
//! cluster, races decided by the API server, and no secret in any answer or log.

use std::time::Duration;

use berth::crd::{Instance, Node};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use crate::common::{self, eventually};
use crate::server::TestServer;

const PASSWORD: &str = "correct horse battery";

async fn count_instances(srv: &TestServer) -> usize {
    Api::<Instance>::namespaced(srv.client.clone(), &srv.ns)
        .list(&ListParams::default())
        .await
        .expect("list instances")
        .items
        .len()
}

async fn user_secrets(srv: &TestServer) -> Vec<Secret> {
    Api::<Secret>::namespaced(srv.client.clone(), &srv.ns)
        .list(&ListParams::default().fields("type=berth.dev/user"))
        .await
        .expect("list secrets")
        .items
}

async fn create_user(srv: &TestServer, username: &str, user_id: &str) -> Value {
    let a = srv
        .call(
            "POST",
            "/api/users/create",
            Some(
                json!({ "username": username, "email": format!("{username}@example.com"),
                         "password": PASSWORD, "userId": user_id }),
            ),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    a.body
}

async fn create_node(srv: &TestServer, ram: Option<&str>) -> String {
    let a = srv
        .call(
            "POST",
            "/api/nodes/create",
            Some(json!({ "name": "Node 1", "address": "127.0.10.1", "ram": ram, "tags": "eu", "port": "3001" })),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    a.body["id"].as_str().expect("node id").to_owned()
}

fn deploy_body(node: &str, user: &str, ports: &str) -> Value {
    json!({
        "image": "ghcr.io/skyportlabs/images:java21", "memory": "1024", "cpu": 1.5,
        "ports": ports, "nodeId": node, "name": "Survival", "user": user,
        "primary": ports.split(',').next().unwrap_or_default(),
        "variables": "{\"MINECRAFT_VERSION\":\"1.20.4\"}", "disk": 2048
    })
}

#[tokio::test]
async fn users_are_created_found_and_listed_without_secrets() {
    let srv = TestServer::start("api-users").await;
    srv.secret(PASSWORD);

    let created = create_user(&srv, "Steve", "1163853373418598482").await;
    assert_eq!(
        created,
        json!({ "userId": "1163853373418598482", "username": "Steve", "email": "Steve@example.com", "admin": false })
    );
    let secrets = user_secrets(&srv).await;
    assert_eq!(secrets.len(), 1);
    let data = secrets[0].data.as_ref().expect("data");
    let hash = String::from_utf8(data["password"].0.clone()).expect("utf-8");
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(
        !data
            .values()
            .any(|v| String::from_utf8_lossy(&v.0).contains(PASSWORD)),
        "plaintext stored"
    );

    // Found right after the 201, by username or email, case-insensitively.
    for (kind, value) in [
        ("username", "steve"),
        ("email", "STEVE@example.com"),
        ("username", "Steve"),
    ] {
        let a = srv
            .call(
                "POST",
                "/api/getUser",
                Some(json!({ "type": kind, "value": value })),
            )
            .await;
        assert_eq!(
            (a.status, &a.body["userId"]),
            (201, &json!("1163853373418598482")),
            "{kind} {value}"
        );
    }
    let a = srv
        .call(
            "POST",
            "/api/getUser",
            Some(json!({ "type": "username", "value": "nobody" })),
        )
        .await;
    assert_eq!(
        (a.status, a.body),
        (400, json!({ "error": "User not found" }))
    );
    let a = srv
        .call(
            "POST",
            "/api/getUser",
            Some(json!({ "type": "phone", "value": "1" })),
        )
        .await;
    assert_eq!(a.status, 400);
    let a = srv
        .call("POST", "/api/getUser", Some(json!({ "type": "email" })))
        .await;
    assert_eq!(
        (a.status, a.body),
        (400, json!({ "error": "Missing required field: value" }))
    );

    // The newer path, a generated userId, an admin, a form-encoded body.
    let a = srv
        .call(
            "POST",
            "/api/auth/create-user",
            Some(json!({ "username": "alex", "email": "alex@example.com", "password": PASSWORD, "admin": true })),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    assert!(
        uuid::Uuid::parse_str(a.body["userId"].as_str().expect("id")).is_ok(),
        "{a:?}"
    );
    assert_eq!(a.body["admin"], json!(true));
    let form = srv
        .raw("POST", "/api/users/create")
        .header("x-api-key", &srv.key)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "username=formy&email=formy%40example.com&password={}&admin=false",
            PASSWORD.replace(' ', "+")
        ));
    let a = srv.send(form).await;
    assert_eq!(
        (a.status, &a.body["username"]),
        (201, &json!("formy")),
        "{a:?}"
    );

    let a = srv.call("GET", "/api/users", None).await;
    assert_eq!(a.status, 200);
    let names: Vec<&str> = a
        .body
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for u in a.body.as_array().expect("list") {
        let keys: Vec<&String> = u.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            ["admin", "email", "userId", "username"],
            "only public fields"
        );
    }
    srv.finish().await;
}

#[tokio::test]
async fn bad_user_creates_answer_400_or_409_and_write_nothing() {
    let srv = TestServer::start("api-users-bad").await;
    srv.secret(PASSWORD);
    create_user(&srv, "steve", "u1").await;
    let before = user_secrets(&srv).await.len();
    let cases = [
        (
            json!({ "email": "a@example.com", "password": PASSWORD }),
            400,
            "Missing required field: username",
        ),
        (
            json!({ "username": "a" }),
            400,
            "Missing required fields: email, password",
        ),
        (
            json!({ "username": "a", "email": "not-an-email", "password": PASSWORD }),
            400,
            "email is not a valid email address",
        ),
        (
            json!({ "username": "a", "email": "a@example.com", "password": "short" }),
            400,
            "password must be between 8 and 1024 characters",
        ),
        (
            json!({ "username": "a\u{0007}", "email": "a@example.com", "password": PASSWORD }),
            400,
            "username must not contain control characters",
        ),
        (
            json!({ "username": ["a"], "email": "a@example.com", "password": PASSWORD }),
            400,
            "username must be a string",
        ),
        (
            json!({ "username": "a", "email": "a@example.com", "password": PASSWORD, "admin": "yes" }),
            400,
            "admin must be true or false",
        ),
        (
            json!({ "username": "STEVE", "email": "new@example.com", "password": PASSWORD }),
            409,
            "User already exists",
        ),
        (
            json!({ "username": "other", "email": "Steve@Example.com ", "password": PASSWORD }),
            409,
            "User already exists",
        ),
        (
            json!({ "username": "other", "email": "o@example.com", "password": PASSWORD, "userId": "u1" }),
            409,
            "User already exists",
        ),
    ];
    for (body, status, message) in cases {
        let a = srv
            .call("POST", "/api/users/create", Some(body.clone()))
            .await;
        assert_eq!(
            (a.status, a.body),
            (status, json!({ "error": message })),
            "{body}"
        );
    }
    assert_eq!(
        user_secrets(&srv).await.len(),
        before,
        "a refused create wrote nothing"
    );
    srv.finish().await;
}

#[tokio::test]
async fn concurrent_creates_of_one_username_or_email_have_exactly_one_winner() {
    let srv = TestServer::start("api-users-race").await;
    srv.secret(PASSWORD);
    let same_username = (0..50).map(|i| {
        srv.call(
            "POST",
            "/api/users/create",
            Some(json!({ "username": "racer", "email": format!("racer{i}@example.com"), "password": PASSWORD })),
        )
    });
    let answers = futures::future::join_all(same_username).await;
    let created = answers.iter().filter(|a| a.status == 201).count();
    let conflicts = answers.iter().filter(|a| a.status == 409).count();
    assert_eq!((created, conflicts), (1, 49), "{answers:?}");

    let same_email = (0..50).map(|i| {
        srv.call(
            "POST",
            "/api/users/create",
            Some(json!({ "username": format!("mailer{i}"), "email": "Shared@Example.com", "password": PASSWORD })),
        )
    });
    let answers = futures::future::join_all(same_email).await;
    let created = answers.iter().filter(|a| a.status == 201).count();
    let conflicts = answers.iter().filter(|a| a.status == 409).count();
    assert_eq!((created, conflicts), (1, 49), "{answers:?}");

    // Exactly two users exist, and no half-made one is visible or left over for long.
    let a = srv.call("GET", "/api/users", None).await;
    assert_eq!(a.body.as_array().expect("list").len(), 2, "{a:?}");
    eventually(
        Duration::from_secs(30),
        "losers' Secrets rolled back",
        || async { user_secrets(&srv).await.len() == 2 },
    )
    .await;
    srv.finish().await;
}

#[tokio::test]
async fn api_keys_are_required_checked_and_revocable() {
    let srv = TestServer::start("api-auth").await;
    let a = srv.send(srv.raw("GET", "/api/users")).await;
    assert_eq!(
        (a.status, a.body),
        (401, json!({ "error": "API key is required" }))
    );
    let a = srv
        .send(
            srv.raw("GET", "/api/instances")
                .header("x-api-key", "berth_nope"),
        )
        .await;
    assert_eq!(
        (a.status, a.body),
        (401, json!({ "error": "Invalid API key" }))
    );
    let a = srv
        .send(
            srv.raw("POST", "/api/instances/deploy")
                .header("x-api-key", ""),
        )
        .await;
    assert_eq!(a.status, 401);

    // Stored as a SHA-256 only.
    let secrets: Api<Secret> = Api::namespaced(srv.client.clone(), &srv.ns);
    let stored = secrets.get("berth-apikey-test").await.expect("key secret");
    let data = stored.data.expect("data");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["sha256"]);
    assert_eq!(
        String::from_utf8(data["sha256"].0.clone()).expect("hex"),
        berth::store::apikeys::digest(&srv.key)
    );

    // A second key works at once; revoked, it stops within seconds.
    let (_, second) = berth::store::apikeys::create(&secrets, Some("second".into()))
        .await
        .expect("create");
    srv.secret(&second);
    eventually(Duration::from_secs(5), "new key accepted", || async {
        srv.send(srv.raw("GET", "/api/users").header("x-api-key", &second))
            .await
            .status
            == 200
    })
    .await;
    berth::store::apikeys::revoke(&secrets, "second")
        .await
        .expect("revoke");
    eventually(Duration::from_secs(5), "revoked key refused", || async {
        srv.send(srv.raw("GET", "/api/users").header("x-api-key", &second))
            .await
            .status
            == 401
    })
    .await;
    assert_eq!(
        srv.call("GET", "/api/users", None).await.status,
        200,
        "the first key still works"
    );
    srv.finish().await;
}

#[tokio::test]
async fn nodes_are_created_listed_and_deleted_only_when_empty() {
    let srv = TestServer::start("api-nodes").await;
    let a = srv
        .call(
            "POST",
            "/api/nodes/create",
            Some(
                json!({ "name": "Frankfurt 1", "tags": "eu,fast", "ram": "16GB", "disk": 102400,
                         "processor": "EPYC", "address": "127.0.10.2", "port": 3001 }),
            ),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.body["id"].as_str().expect("id").to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert_eq!(
        a.body,
        json!({ "id": id, "name": "Frankfurt 1", "tags": "eu,fast", "ram": 16384, "disk": 102400, "processor": "EPYC",
                "address": "127.0.10.2", "port": 3001, "status": "Unknown", "kubernetesNode": null, "instances": 0 })
    );
    let node = Api::<Node>::namespaced(srv.client.clone(), &srv.ns)
        .get(&id)
        .await
        .expect("node resource");
    assert_eq!(
        (node.spec.ram, node.spec.address.as_str()),
        (Some(16384), "127.0.10.2")
    );

    let a = srv.call("GET", "/api/nodes", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.as_array().expect("list").len(), 1);
    assert!(
        ["Online", "Offline", "Unknown"].contains(&a.body[0]["status"].as_str().expect("status"))
    );

    let nodes_before = Api::<Node>::namespaced(srv.client.clone(), &srv.ns)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .len();
    for (body, message) in [
        (json!({ "name": "x" }), "Missing required field: address"),
        (
            json!({ "name": "x", "address": "not an address" }),
            "address must be an IP address or a host name",
        ),
        (
            json!({ "name": "x", "address": "127.0.0.1", "ram": "lots" }),
            "ram must be a size in MiB, or with a unit such as 8GB",
        ),
        (
            json!({ "name": "x", "address": "127.0.0.1", "port": 70000 }),
            "port must be between 1 and 65535",
        ),
    ] {
        let a = srv
            .call("POST", "/api/nodes/create", Some(body.clone()))
            .await;
        assert_eq!(
            (a.status, a.body),
            (400, json!({ "error": message })),
            "{body}"
        );
    }
    let nodes_after = Api::<Node>::namespaced(srv.client.clone(), &srv.ns)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .len();
    assert_eq!(nodes_before, nodes_after, "refused creates wrote nothing");

    // Not deletable while an instance is on it.
    create_user(&srv, "owner", "owner-1").await;
    let a = srv
        .call(
            "POST",
            "/api/instances/deploy",
            Some(deploy_body(&id, "owner-1", "25565")),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let instance = a.body["Id"].as_str().expect("Id").to_owned();
    let a = srv
        .call("DELETE", "/api/nodes/delete", Some(json!({ "nodeId": id })))
        .await;
    assert_eq!(
        (a.status, a.body),
        (400, json!({ "error": "There are instances on the node" }))
    );
    let a = srv
        .call(
            "DELETE",
            "/api/instance/delete",
            Some(json!({ "id": instance })),
        )
        .await;
    assert_eq!(a.status, 201);
    let a = srv
        .call("DELETE", "/api/nodes/delete", Some(json!({ "nodeId": id })))
        .await;
    assert_eq!(
        (a.status, a.body),
        (201, json!({ "message": "Node deleted" }))
    );
    assert!(
        Api::<Node>::namespaced(srv.client.clone(), &srv.ns)
            .get_opt(&id)
            .await
            .expect("get")
            .is_none()
    );
    let a = srv
        .call("DELETE", "/api/nodes/delete", Some(json!({ "nodeId": id })))
        .await;
    assert_eq!(
        (a.status, a.body),
        (400, json!({ "error": "Node not found" }))
    );
    let a = srv
        .call("DELETE", "/api/nodes/delete", Some(json!({})))
        .await;
    assert_eq!(
        (a.status, a.body),
        (400, json!({ "error": "Missing required field: nodeId" }))
    );
    srv.finish().await;
}

#[tokio::test]
async fn instances_are_deployed_read_suspended_and_deleted() {
    let srv = TestServer::start("api-instances").await;
    let node = create_node(&srv, Some("4096")).await;
    create_user(&srv, "steve", "1163853373418598482").await;
    create_user(&srv, "alex", "alex-1").await;

    let a = srv
        .call(
            "POST",
            "/api/instances/deploy",
            Some(deploy_body(
                &node,
                "1163853373418598482",
                "25565:25565,25566",
            )),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.body["Id"].as_str().expect("Id").to_owned();
    assert_eq!(
        a.body,
        json!({ "message": "Instance deployed", "Id": id, "volumeId": id, "state": "INSTALLING" })
    );
    assert!(
        id.len() == 8 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );

    let inst = Api::<Instance>::namespaced(srv.client.clone(), &srv.ns)
        .get(&id)
        .await
        .expect("instance resource");
    assert_eq!(inst.spec.node, node);
    assert_eq!(inst.spec.user_id, "1163853373418598482");
    assert_eq!(
        (inst.spec.memory, inst.spec.cpu, inst.spec.disk),
        (1024, 1.5, Some(2048))
    );
    assert_eq!(inst.spec.primary_port, 25565);
    assert_eq!(inst.spec.variables["MINECRAFT_VERSION"], "1.20.4");
    assert_eq!(
        inst.spec.variables["BUILD_NUMBER"], "130",
        "catalog defaults filled in"
    );
    assert_eq!(
        inst.spec.image_name.as_deref(),
        Some("Minecraft: Java Edition (Paper)")
    );

    // Readable at once.
    let a = srv
        .call("POST", "/api/getInstance", Some(json!({ "id": id })))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["Ports"], json!("25565:25565,25566:25566"));
    assert_eq!(a.body["Node"]["id"], json!(node));
    assert_eq!(a.body["User"], json!("1163853373418598482"));
    assert_eq!(
        (
            a.body["Memory"].clone(),
            a.body["Cpu"].clone(),
            a.body["Disk"].clone()
        ),
        (json!(1024), json!(1.5), json!(2048))
    );
    assert!(["INSTALLING", "READY"].contains(&a.body["InternalState"].as_str().expect("state")));
    assert!(
        a.body["Env"]
            .as_array()
            .expect("env")
            .contains(&json!("PRIMARY_PORT=25565"))
    );
    let a = srv
        .call(
            "POST",
            "/api/getUserInstance",
            Some(json!({ "userId": "1163853373418598482" })),
        )
        .await;
    assert_eq!((a.status, a.body.as_array().map(Vec::len)), (200, Some(1)));
    let a = srv
        .call(
            "POST",
            "/api/getUserInstance",
            Some(json!({ "userId": "alex-1" })),
        )
        .await;
    assert_eq!((a.status, a.body), (200, json!([])));
    let a = srv
        .call(
            "POST",
            "/api/getUserInstance",
            Some(json!({ "userId": "nobody" })),
        )
        .await;
    assert_eq!(
        (a.status, a.body),
        (400, json!({ "error": "User not found" }))
    );
    let a = srv.call("GET", "/api/instances", None).await;
    assert_eq!((a.status, a.body.as_array().map(Vec::len)), (200, Some(1)));

    // The same image by Id and by Name; variables as an object.
    let mut by_name = deploy_body(&node, "alex-1", "30000");
    by_name["image"] = json!("Minecraft: Java Edition (Paper)");
    by_name["variables"] = json!({ "MINECRAFT_VERSION": "1.21" });
    by_name["memory"] = json!(512);
    let a = srv
        .call("POST", "/api/instances/deploy", Some(by_name))
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let second = a.body["Id"].as_str().expect("Id").to_owned();

    // Suspend and unsuspend.
    let a = srv
        .call("POST", &format!("/api/instances/suspend/{id}"), None)
        .await;
    assert_eq!(
        (a.status, &a.body["suspended"]),
        (200, &json!(true)),
        "{a:?}"
    );
    let inst = Api::<Instance>::namespaced(srv.client.clone(), &srv.ns)
        .get(&id)
        .await
        .expect("get");
    assert!(inst.spec.suspended);
    let a = srv
        .call("POST", "/api/getInstance", Some(json!({ "id": id })))
        .await;
    assert_eq!(a.body["suspended"], json!(true));
    let a = srv
        .call("POST", &format!("/api/instances/unsuspend/{id}"), None)
        .await;
    assert_eq!((a.status, &a.body["suspended"]), (200, &json!(false)));
    let a = srv
        .call("POST", "/api/instances/suspend/nothere", None)
        .await;
    assert_eq!(
        (a.status, a.body),
        (400, json!({ "error": "Instance not found" }))
    );

    // Delete.
    let a = srv
        .call("DELETE", "/api/instance/delete", Some(json!({ "id": id })))
        .await;
    assert_eq!(
        (a.status, a.body),
        (201, json!({ "message": "Instance deleted" }))
    );
    assert!(
        Api::<Instance>::namespaced(srv.client.clone(), &srv.ns)
            .get_opt(&id)
            .await
            .expect("get")
            .is_none()
    );
    let a = srv
        .call("POST", "/api/getInstance", Some(json!({ "id": id })))
        .await;
    assert_eq!(
        (a.status, a.body),
        (400, json!({ "error": "Instance not found" })),
        "gone at once"
    );
    let a = srv
        .call("DELETE", "/api/instance/delete", Some(json!({ "id": id })))
        .await;
    assert_eq!(
        (a.status, a.body),
        (400, json!({ "error": "Instance not found" }))
    );
    let a = srv
        .call("DELETE", "/api/instance/delete", Some(json!({})))
        .await;
    assert_eq!(
        (a.status, a.body),
        (400, json!({ "error": "Missing required field: id" }))
    );
    // Its host port claims go with it: the port is free again.
    eventually(Duration::from_secs(30), "port 25565 free again", || async {
        srv.call(
            "POST",
            "/api/instances/deploy",
            Some(deploy_body(&node, "alex-1", "25565")),
        )
        .await
        .status
            == 201
    })
    .await;
    let _ = second;
    srv.finish().await;
}

#[tokio::test]
async fn bad_deploys_answer_400_naming_the_problem_and_write_nothing() {
    let srv = TestServer::start("api-deploy-bad").await;
    let node = create_node(&srv, Some("2048")).await;
    create_user(&srv, "steve", "u1").await;
    let a = srv
        .call(
            "POST",
            "/api/instances/deploy",
            Some(deploy_body(&node, "u1", "25565:25565")),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let before = count_instances(&srv).await;

    let with = |key: &str, value: Value| {
        let mut b = deploy_body(&node, "u1", "27015");
        b[key] = value;
        b
    };
    let cases = [
        (
            json!({}),
            "Missing required fields: image, memory, cpu, ports, nodeId, name, user, primary",
        ),
        (
            with("memory", json!(0)),
            "memory must be a whole number of MiB between 1 and 1048576",
        ),
        (
            with("memory", json!("-5")),
            "memory must be a whole number of MiB between 1 and 1048576",
        ),
        (
            with("memory", json!("NaN")),
            "memory must be a whole number of MiB between 1 and 1048576",
        ),
        (
            with("memory", json!(1e12)),
            "memory must be a whole number of MiB between 1 and 1048576",
        ),
        (
            with("cpu", json!("0")),
            "cpu must be a number of cores greater than 0 and at most 1024",
        ),
        (with("cpu", json!("abc")), "cpu must be a number"),
        (
            with("ports", json!("70000")),
            "ports: \"70000\" is not a port between 1 and 65535",
        ),
        (
            with("ports", json!("1:25,2:25")),
            "ports: host port 25 is listed twice",
        ),
        (
            with("primary", json!("1234")),
            "primary port 1234 is not one of the instance's ports",
        ),
        (
            with("nodeId", json!("no-such-node")),
            "Node not found: no-such-node",
        ),
        (with("user", json!("nobody")), "User not found: nobody"),
        (
            with("image", json!("docker.io/library/nginx")),
            "Image not found in the catalog: docker.io/library/nginx",
        ),
        (
            with("variables", json!("[1,2]")),
            "variables must be an object or a JSON string of one",
        ),
        (
            with("memory", json!(1500)),
            &format!("Not enough memory on node {node}: 1024 MiB free, 1500 MiB requested"),
        ),
        (
            {
                let mut b = deploy_body(&node, "u1", "25565");
                b["memory"] = json!(16);
                b
            },
            &format!("Host port 25565 is already in use on node {node}"),
        ),
    ];
    for (body, message) in cases {
        let a = srv
            .call("POST", "/api/instances/deploy", Some(body.clone()))
            .await;
        assert_eq!(
            (a.status, a.body),
            (400, json!({ "error": message })),
            "{body}"
        );
    }
    assert_eq!(
        count_instances(&srv).await,
        before,
        "no refused deploy wrote an Instance"
    );
    srv.finish().await;
}

#[tokio::test]
async fn racing_deploys_for_one_host_port_have_one_winner() {
    let srv = TestServer::start("api-port-race").await;
    let node = create_node(&srv, None).await;
    create_user(&srv, "steve", "u1").await;
    let racers = (0..8).map(|_| {
        srv.call(
            "POST",
            "/api/instances/deploy",
            Some(deploy_body(&node, "u1", "25565")),
        )
    });
    let answers = futures::future::join_all(racers).await;
    let created = answers.iter().filter(|a| a.status == 201).count();
    let refused = answers.iter().filter(|a| a.status == 400).count();
    assert_eq!((created, refused), (1, 7), "{answers:?}");
    eventually(Duration::from_secs(30), "losers rolled back", || async {
        count_instances(&srv).await == 1
    })
    .await;
    let claims = Api::<ConfigMap>::namespaced(srv.client.clone(), &srv.ns)
        .list(&ListParams::default().labels("berth.dev/claim=hostport"))
        .await
        .expect("claims");
    assert_eq!(claims.items.len(), 1, "one claim for the one winner");
    srv.finish().await;
}

#[tokio::test]
async fn racing_deploys_for_the_same_ports_in_any_order_have_one_winner() {
    let srv = TestServer::start("api-ports-race").await;
    let node = create_node(&srv, None).await;
    create_user(&srv, "steve", "u1").await;
    // Each round, racers list the same three ports in opposite orders: had each
    // claimed in its own order, two could each win a port and both fail.
    for round in 0..4 {
        let ports: Vec<i32> = (0..3).map(|i| 26000 + round * 10 + i).collect();
        let racers = (0..8).map(|r| {
            let mut mine = ports.clone();
            if r % 2 == 1 {
                mine.reverse();
            }
            let list: Vec<String> = mine.iter().map(i32::to_string).collect();
            let mut body = deploy_body(&node, "u1", &list.join(","));
            body["memory"] = json!(16);
            srv.call("POST", "/api/instances/deploy", Some(body))
        });
        let answers = futures::future::join_all(racers).await;
        let created = answers.iter().filter(|a| a.status == 201).count();
        let refused = answers.iter().filter(|a| a.status == 400).count();
        assert_eq!((created, refused), (1, 7), "round {round}: {answers:?}");
    }
    eventually(Duration::from_secs(30), "losers rolled back", || async {
        count_instances(&srv).await == 4
    })
    .await;
    let claims = Api::<ConfigMap>::namespaced(srv.client.clone(), &srv.ns)
        .list(&ListParams::default().labels("berth.dev/claim=hostport"))
        .await
        .expect("claims");
    assert_eq!(
        claims.items.len(),
        12,
        "the winners' three ports each, no more"
    );
    srv.finish().await;
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let srv = TestServer::start("api-malformed").await;
    let key = srv.key.clone();
    let post = |path: &str| srv.raw("POST", path).header("x-api-key", &key);
    let cases = [
        (
            post("/api/users/create")
                .header("content-type", "application/json")
                .body("{not json"),
            400,
        ),
        (
            post("/api/users/create")
                .header("content-type", "application/json")
                .body("[]"),
            400,
        ),
        (
            post("/api/users/create")
                .header("content-type", "application/json")
                .body(r#"{"a":1,"a":2}"#),
            400,
        ),
        (
            post("/api/users/create")
                .header("content-type", "text/plain")
                .body("{}"),
            415,
        ),
        (post("/api/users/create").body("{}"), 415),
        (
            post("/api/users/create")
                .header("content-type", "application/json")
                .body(vec![b' '; 1024 * 1024 + 512]),
            413,
        ),
        (srv.raw("GET", "/api/nope").header("x-api-key", &key), 404),
        (srv.raw("GET", "/nope"), 404),
        (srv.raw("PUT", "/api/users").header("x-api-key", &key), 405),
    ];
    for (req, status) in cases {
        let a = srv.send(req).await;
        assert_eq!(a.status, status, "{a:?}");
        assert!(
            a.body["error"].as_str().is_some_and(|m| !m.is_empty()),
            "JSON error expected: {a:?}"
        );
    }
    assert!(user_secrets(&srv).await.is_empty());
    srv.finish().await;
}

#[tokio::test]
async fn images_come_from_the_catalog_and_the_openapi_document_lists_every_route() {
    let srv = TestServer::start("api-images").await;
    let a = srv.call("GET", "/api/images", None).await;
    assert_eq!(a.status, 200);
    let names: Vec<&str> = a
        .body
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["Name"].as_str())
        .collect();
    assert!(
        names.contains(&"Minecraft: Java Edition (Paper)")
            && names.contains(&"Node.js")
            && names.contains(&"Python"),
        "{names:?}"
    );
    let paper = a
        .body
        .as_array()
        .expect("list")
        .iter()
        .find(|i| i["Name"] == "Minecraft: Java Edition (Paper)")
        .expect("paper");
    assert_eq!(
        paper["Scripts"]["Install"][0]["Path"],
        json!("server.jar"),
        "documents are returned unchanged"
    );

    let a = srv.call("GET", "/api/openapi.json", None).await;
    assert_eq!(a.status, 200);
    assert!(
        a.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        a.body["openapi"]
    );
    let routes = [
        ("/api/users", "get"),
        ("/api/getUser", "post"),
        ("/api/users/create", "post"),
        ("/api/auth/create-user", "post"),
        ("/api/instances", "get"),
        ("/api/instances/deploy", "post"),
        ("/api/instance/delete", "delete"),
        ("/api/getUserInstance", "post"),
        ("/api/getInstance", "post"),
        ("/api/instances/suspend/{id}", "post"),
        ("/api/instances/unsuspend/{id}", "post"),
        ("/api/instances/{id}", "patch"),
        ("/api/instances/{id}/power", "post"),
        ("/api/instances/{id}/reinstall", "post"),
        ("/api/instances/{id}/console-token", "post"),
        ("/api/instances/{id}/logs", "get"),
        ("/api/instances/{id}/stats", "get"),
        ("/api/instances/{id}/ws", "get"),
        ("/api/auth/login", "post"),
        ("/api/images", "get"),
        ("/api/nodes", "get"),
        ("/api/nodes/create", "post"),
        ("/api/nodes/delete", "delete"),
    ];
    for (path, method) in routes {
        assert!(
            a.body["paths"][path][method].is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    let listed: usize = a.body["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, |o| o.len()))
        .sum();
    assert_eq!(listed, routes.len(), "no undocumented extras");
    assert_eq!(
        a.body["components"]["securitySchemes"]["api_key"]["name"],
        json!("x-api-key")
    );
    srv.finish().await;
}

#[tokio::test]
async fn the_front_door_answers_without_a_key() {
    let srv = TestServer::start("api-root").await;
    // A Skyport dashboard probes its base URL at start-up and exits unless 200.
    let a = srv.send(srv.raw("GET", "/")).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["service"], "berth");
    assert_eq!(a.body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(a.body["links"]["openapi"], "/api/openapi.json");
    assert_eq!(a.body["links"]["docs"], "/docs");
    let docs = srv.raw("GET", "/docs").send().await.expect("docs");
    assert_eq!(docs.status(), 200);
    assert!(
        docs.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/html"))
    );
    let page = docs.text().await.expect("page");
    for route in ["/api/instances/deploy", "/api/nodes/create", "/api/getUser"] {
        assert!(page.contains(route), "the docs page lists {route}");
    }
    srv.finish().await;
}

#[tokio::test]
async fn imagename_is_informational_unless_image_names_nothing() {
    let srv = TestServer::start("api-imagename").await;
    let node = create_node(&srv, None).await;
    create_user(&srv, "steve", "u1").await;
    // Deploys with `image` and `imagename`; the answer and the instance read back.
    let deploy = |image: &'static str, imagename: &'static str, port: i32| {
        let mut b = deploy_body(&node, "u1", &port.to_string());
        b["image"] = json!(image);
        b["imagename"] = json!(imagename);
        let srv = &srv;
        async move {
            let a = srv.call("POST", "/api/instances/deploy", Some(b)).await;
            let got = match a.body["Id"].as_str() {
                Some(id) => {
                    srv.call("POST", "/api/getInstance", Some(json!({ "id": id })))
                        .await
                        .body
                }
                None => Value::Null,
            };
            (a, got)
        }
    };
    let paper = "Minecraft: Java Edition (Paper)";
    // A bot sends a word of its own as imagename: the image decides.
    let (a, got) = deploy(
        "ghcr.io/skyportlabs/images:java21",
        "my paper server",
        25565,
    )
    .await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(
        (&got["Image"], &got["ImageName"]),
        (&json!("ghcr.io/skyportlabs/images:java21"), &json!(paper))
    );
    // image names nothing: imagename is tried, and the catalog's image runs.
    let (a, got) = deploy("paper-latest", paper, 25566).await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(got["Image"], "ghcr.io/skyportlabs/images:java21");
    // Neither names anything: 400.
    let (a, _) = deploy("paper-latest", "no such image", 25567).await;
    assert_eq!(
        (a.status, a.body),
        (
            400,
            json!({ "error": "Image not found in the catalog: paper-latest" })
        )
    );
    srv.finish().await;
}

#[tokio::test]
async fn a_reused_idempotency_key_with_another_body_is_refused() {
    let srv = TestServer::start("api-idem").await;
    let node = create_node(&srv, None).await;
    create_user(&srv, "steve", "u1").await;
    let send = |body: Value| {
        srv.send(
            srv.raw("POST", "/api/instances/deploy")
                .header("x-api-key", &srv.key)
                .header("idempotency-key", "order-7")
                .json(&body),
        )
    };
    let first = send(deploy_body(&node, "u1", "25565")).await;
    assert_eq!(first.status, 201, "{first:?}");
    let again = send(deploy_body(&node, "u1", "25565")).await;
    assert_eq!(
        (again.status, &again.body["Id"]),
        (201, &first.body["Id"]),
        "a retry gets the first instance"
    );
    let other = send(deploy_body(&node, "u1", "25570")).await;
    assert_eq!(
        (other.status, other.body),
        (
            422,
            json!({ "error": "Idempotency-Key was already used with a different request" })
        )
    );
    assert_eq!(count_instances(&srv).await, 1, "nothing more was written");
    srv.finish().await;
}

#[tokio::test]
async fn requests_without_a_key_get_401_before_the_informers_sync() {
    let client = common::client().await;
    common::crds(&client).await;
    let ns = common::namespace(&client, "api-unsynced").await;
    // A ServiceAccount allowed nothing: Berth starts, but its watches never list.
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "nobody" } })).expect("sa");
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &ns)
        .create(&Default::default(), &sa)
        .await
        .expect("service account");
    let kubeconfig = common::service_account_kubeconfig(&ns, "nobody").await;
    let berth = crate::server::start_berth(&ns, &["--api-only"], &kubeconfig, &[]).await;
    let http = reqwest::Client::new();
    let get = |key: Option<&str>| {
        let mut r = http.get(format!("{}/api/users", berth.base));
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        r.send()
    };
    let unkeyed = get(None).await.expect("answer");
    assert_eq!(unkeyed.status(), 401);
    assert_eq!(
        unkeyed.json::<Value>().await.expect("json"),
        json!({ "error": "API key is required" })
    );
    let keyed = get(Some("berth_anything")).await.expect("answer");
    assert_eq!(keyed.status(), 503, "a keyed request needs the informers");
    let ready = http
        .get(format!("{}/readyz", berth.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    assert!(
        ready
            .text()
            .await
            .expect("text")
            .contains("informers have not listed")
    );
    drop(berth);
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .delete(&ns, &Default::default())
        .await;
}
