//! `/openapi.json` documents every route, and real responses validate against it: a
//! response that drifts from the document fails here.

use gigafactory_tests::{spawn_app, Resp, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Spec(Value);

impl Spec {
    async fn fetch(app: &TestApp) -> Self {
        let r = app.call(Method::GET, "/openapi.json", None, None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body["openapi"].as_str().unwrap().starts_with("3."));
        Self(r.body)
    }

    /// The validation errors of `body` against `schema_name`'s component schema.
    fn errors_for(&self, schema_name: &str, body: &Value) -> Vec<String> {
        let root = json!({"$ref": format!("#/components/schemas/{schema_name}"), "components": self.0["components"]});
        let validator = jsonschema::validator_for(&root).expect("compiles");
        validator.iter_errors(body).map(|e| e.to_string()).collect()
    }

    /// Panics unless `resp` is documented for this operation and its body validates.
    fn check(&self, method: &str, template: &str, resp: &Resp) {
        let op = &self.0["paths"][template][method];
        assert!(op.is_object(), "{method} {template} is not in the document");
        let documented = &op["responses"][resp.status.as_u16().to_string()];
        assert!(
            documented.is_object(),
            "{method} {template}: status {} is not documented ({:?})",
            resp.status,
            resp.body
        );
        let Some(schema) = documented["content"]["application/json"]["schema"].as_object() else {
            assert!(
                resp.body.is_null(),
                "{method} {template} {}: a body the document does not describe",
                resp.status
            );
            return;
        };
        let mut root = schema.clone();
        root.insert("components".into(), self.0["components"].clone());
        let validator = jsonschema::validator_for(&Value::Object(root))
            .expect("the document's schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(&resp.body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {}: {errors:#?}\n{}",
            resp.status,
            resp.body
        );
    }
}

#[tokio::test]
async fn the_main_routes_answer_what_the_document_says() {
    let app = spawn_app().await;
    let spec = Spec::fetch(&app).await;
    let routes = spec.0["paths"].as_object().unwrap();
    for path in [
        "/fleet/claim",
        "/fleet/jobs/{job_id}/report",
        "/fleet/stream",
        "/fleet/audit/verify",
        "/metrics",
        "/fleet/jobs/{job_id}/artifacts",
    ] {
        assert!(routes.contains_key(path), "{path} documented");
    }
    assert!(spec.0["components"]["securitySchemes"]["bearer"].is_object());

    let admin = app.admin_token.clone();
    let r = app
        .post(
            "/fleet/tokens",
            &admin,
            json!({"role": "operator", "products": ["p1"], "name": "o"}),
        )
        .await;
    spec.check("post", "/fleet/tokens", &r);
    let op = r.body["token"].as_str().unwrap().to_string();
    let r = app
        .post(
            "/fleet/factories/enroll",
            &op,
            json!({"name": "f", "productIds": ["p1"], "capabilities": ["rust"]}),
        )
        .await;
    spec.check("post", "/fleet/factories/enroll", &r);
    let (factory_id, ft) = (
        r.body["factoryId"].as_str().unwrap().to_string(),
        r.body["token"].as_str().unwrap().to_string(),
    );
    let r = app.post("/fleet/jobs", &op, json!({"productId": "p1", "title": "t", "payload": {"a": [1, 2]}, "budget": {"usd": 1.5}})).await;
    spec.check("post", "/fleet/jobs", &r);
    let id = r.body["id"].as_str().unwrap().to_string();
    spec.check(
        "get",
        "/fleet/jobs",
        &app.get("/fleet/jobs?productId=p1", &op).await,
    );
    let job = app.get(&format!("/fleet/jobs/{id}"), &op).await;
    spec.check("get", "/fleet/jobs/{job_id}", &job);
    // The check can fail: a drifted body does not validate.
    assert!(spec.errors_for("JobView", &job.body).is_empty());
    let mut drifted = job.body.clone();
    drifted["version"] = json!("one");
    drifted.as_object_mut().unwrap().remove("stage");
    assert_eq!(spec.errors_for("JobView", &drifted).len(), 2);
    spec.check(
        "get",
        "/fleet/explain",
        &app.get(&format!("/fleet/explain?factoryId={factory_id}"), &op)
            .await,
    );
    let r = app.post("/fleet/claim", &ft, json!({"waitMs": 100})).await;
    spec.check("post", "/fleet/claim", &r);
    let epoch = r.body["lease"]["epoch"].as_u64().unwrap();
    spec.check(
        "post",
        "/fleet/claim",
        &app.post("/fleet/claim", &ft, json!({})).await,
    ); // 204
    spec.check(
        "post",
        "/fleet/factories/heartbeat",
        &app.post(
            "/fleet/factories/heartbeat",
            &ft,
            json!({"runningJobIds": [id]}),
        )
        .await,
    );
    spec.check(
        "get",
        "/fleet/factories",
        &app.get("/fleet/factories", &op).await,
    );
    spec.check(
        "post",
        "/fleet/jobs/{job_id}/lease/renew",
        &app.post(
            &format!("/fleet/jobs/{id}/lease/renew"),
            &ft,
            json!({"epoch": epoch}),
        )
        .await,
    );
    let fenced = app
        .post(
            &format!("/fleet/jobs/{id}/lease/renew"),
            &ft,
            json!({"epoch": epoch + 9}),
        )
        .await;
    assert_eq!(fenced.code(), "fenced");
    spec.check("post", "/fleet/jobs/{job_id}/lease/renew", &fenced);
    let r = app
        .post(
            &format!("/fleet/jobs/{id}/report"),
            &ft,
            json!({"epoch": epoch, "status": "succeeded", "costUsd": 0.2}),
        )
        .await;
    spec.check("post", "/fleet/jobs/{job_id}/report", &r);
    spec.check(
        "patch",
        "/fleet/jobs/{job_id}",
        &app.patch(
            &format!("/fleet/jobs/{id}"),
            &op,
            json!({"stage": "shipped"}),
        )
        .await,
    );
    spec.check(
        "patch",
        "/fleet/jobs/{job_id}",
        &app.patch(
            &format!("/fleet/jobs/{id}"),
            &op,
            json!({"stage": "shipped"}),
        )
        .await,
    ); // 409
    spec.check(
        "get",
        "/fleet/jobs/{job_id}/runs",
        &app.get(&format!("/fleet/jobs/{id}/runs"), &op).await,
    );
    spec.check(
        "get",
        "/fleet/jobs/{job_id}/events",
        &app.get(&format!("/fleet/jobs/{id}/events"), &op).await,
    );
    spec.check(
        "get",
        "/fleet/jobs/{job_id}/artifacts",
        &app.get(&format!("/fleet/jobs/{id}/artifacts"), &op).await,
    );
    spec.check(
        "get",
        "/fleet/events",
        &app.get("/fleet/events?after=0", &op).await,
    );
    spec.check(
        "get",
        "/fleet/weights/{product_id}",
        &app.get("/fleet/weights/p1", &op).await,
    );
    spec.check(
        "put",
        "/fleet/weights/{product_id}",
        &app.call(
            Method::PUT,
            "/fleet/weights/p1",
            Some(&op),
            Some(&json!({"weights": {"age": 0.2}})),
        )
        .await,
    );
    spec.check(
        "get",
        "/fleet/flags",
        &app.get("/fleet/flags", &admin).await,
    );
    spec.check(
        "get",
        "/fleet/audit/verify",
        &app.get("/fleet/audit/verify", &admin).await,
    );
    spec.check(
        "get",
        "/readyz",
        &app.call(Method::GET, "/readyz", None, None).await,
    );
    // Errors have the documented shape too.
    spec.check(
        "post",
        "/fleet/jobs",
        &app.post("/fleet/jobs", &op, json!({"productId": "p1"}))
            .await,
    );
    spec.check(
        "get",
        "/fleet/jobs/{job_id}",
        &app.get("/fleet/jobs/00000000-0000-0000-0000-000000000000", &op)
            .await,
    );
    spec.check(
        "get",
        "/fleet/jobs",
        &app.call(Method::GET, "/fleet/jobs", None, None).await,
    );
}
