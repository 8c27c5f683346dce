//! A task with `"network": true` gets the engine's default bridge. `tox-like-scripts/test`
//! runs this binary once more after every other test binary: no test may leave the shared
//! engine without its `docker0` bridge (a private engine started by a test once deleted it).

mod common;

use common::{Server, BUSYBOX};
use serde_json::json;

#[tokio::test]
async fn a_networked_task_has_an_address_on_the_default_bridge() {
    let server = Server::start_with(|c| c.allow_network = true).await;
    let t = server
        .run(
            &json!({"task_name": "net", "image": BUSYBOX, "network": true,
                     "cmd_list": ["sh", "-c", "ip -4 addr show eth0"]}),
        )
        .await;
    assert_eq!(t["state"], "FINISHED", "{t}");
    assert_eq!(t["exit_code"], 0, "{t}");
    assert!(
        t["stdout"].as_str().is_some_and(|s| s.contains("inet ")),
        "no IPv4 address on eth0: {t}"
    );
    server.stop().await;
}
