//! The OpenAPI document and the offline docs UI.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn every_documented_operation_is_a_route_the_api_serves() {
    let app = spawn_app().await;

    let response = app
        .anonymous
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "only {} paths documented", paths.len());

    let mut operations = 0;
    for (template, item) in paths {
        let path = template
            .replace("{code}", "ABCDEFGH23456789")
            .replace(['{', '}'], "")
            .split('/')
            .map(|segment| {
                if segment.ends_with("_id") {
                    "1"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let answer = app
                .anonymous
                .request(method.clone(), app.url(&path))
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            assert!(
                status != 405 && body["code"] != "NOT_FOUND",
                "{method} {template} ({path}) is documented but not routed: {status} {body}"
            );
            operations += 1;
        }
    }
    assert!(operations >= 30, "only {operations} operations documented");
}

#[tokio::test]
async fn the_docs_ui_loads_from_the_service_itself() {
    let app = spawn_app().await;

    let page = app.anonymous.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );

    for (asset, kind) in [
        ("/docs/swagger-ui-bundle.js", "javascript"),
        ("/docs/swagger-ui.css", "css"),
    ] {
        assert!(html.contains(asset), "the page does not load {asset}");
        let response = app.anonymous.get(app.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.contains(kind), "{asset}: {content_type}");
        assert!(
            response.bytes().await.unwrap().len() > 10_000,
            "{asset} is a stub"
        );
    }
}
