//! `templates`: rendering a template's `{{param}}`s per channel (`Template::render`), the engine's render of
//! every channel of a request (`NewNotification::render`, what the shard calls on accept), and its 422 path: a
//! missing parameter becomes `EngineError::Invalid` on `template.params.<name>`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput};
use herald::domain::{Category, Channel, Priority, Strategy, Template, TemplateBody};
use herald::engine::{EngineError, Message, NewNotification};
use jiff::Timestamp;

fn body(title: Option<&str>, body: &str, html: Option<&str>) -> TemplateBody {
    TemplateBody {
        title: title.map(str::to_string),
        body: body.into(),
        html: html.map(str::to_string),
        templatecode: None,
    }
}

/// An order-shipped template in two locales, three channels, three or four placeholders per body.
fn order_shipped() -> Template {
    let locales = |b: TemplateBody| BTreeMap::from([("en".to_string(), b.clone()), ("ko".to_string(), b)]);
    let push = body(Some("{{name}}, your order shipped"), "Order {{order_id}} is on its way with {{carrier}}.", None);
    let email = body(
        Some("Order {{order_id}} shipped"),
        "Hi {{name}},\n\nOrder {{order_id}} left our warehouse with {{carrier}}. Track it: {{tracking_url}}\n",
        Some(
            "<p>Hi {{name}},</p><p>Order <b>{{order_id}}</b> left with {{carrier}}. <a href=\"{{tracking_url}}\">Track it</a>.</p>",
        ),
    );
    let sms = body(None, "[Shop] {{name}}, order {{order_id}} shipped via {{carrier}}.", None);
    Template {
        id: "order_shipped".into(),
        channels: BTreeMap::from([
            (Channel::Push, locales(push)),
            (Channel::Email, locales(email)),
            (Channel::Sms, locales(sms)),
        ]),
        default_locale: Some("en".into()),
        updated_at: Timestamp::UNIX_EPOCH,
    }
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn request(template: &Arc<Template>, params: BTreeMap<String, String>) -> NewNotification {
    NewNotification {
        owner: "user-00000042".into(),
        adhoc: None,
        category: Category::Transaction,
        channels: vec![Channel::Push, Channel::Email, Channel::Sms],
        strategy: Strategy::Parallel,
        priority: Priority::Normal,
        message: Message::Template { template: template.clone(), params },
        idempotency_key: None,
        claims: Vec::new(),
        metadata: None,
        expires_at: None,
        send_at: None,
        campaign: None,
    }
}

pub fn templates(c: &mut Criterion) {
    let template = Arc::new(order_shipped());
    let full = params(&[
        ("name", "Jiwoo"),
        ("order_id", "A-20261122-0042"),
        ("carrier", "CJ Logistics"),
        ("tracking_url", "https://track.example.com/A-20261122-0042"),
    ]);
    let mut group = c.benchmark_group("templates");
    group.throughput(Throughput::Elements(1));

    for (name, channel) in
        [("render/push", Channel::Push), ("render/email", Channel::Email), ("render/sms", Channel::Sms)]
    {
        let rendered = template.render(channel, Some("ko-KR"), &full).expect("every placeholder has a parameter");
        assert!(!rendered.body.contains("{{") && rendered.body.contains("A-20261122-0042"), "{rendered:?}");
        group.bench_function(name, |b| b.iter(|| template.render(channel, black_box(Some("ko-KR")), &full)));
    }

    let complete = request(&template, full.clone());
    assert_eq!(complete.render(Some("en")).expect("renders").len(), 3);
    group.bench_function("request_render/push_email_sms", |b| b.iter(|| black_box(&complete).render(Some("en"))));

    // No `carrier`: the first channel's body fails, which the API answers 422 on the parameter's field.
    let mut missing = full.clone();
    missing.remove("carrier");
    let incomplete = request(&template, missing);
    match incomplete.render(Some("en")) {
        Err(EngineError::Invalid { field, .. }) => assert_eq!(field, "template.params.carrier"),
        other => panic!("a missing parameter must be Invalid on its field: {other:?}"),
    }
    group.bench_function("request_render/missing_param_422", |b| {
        b.iter(|| black_box(&incomplete).render(Some("en")).is_err())
    });
    group.finish();
}
