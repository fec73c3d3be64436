//! Rules for `nodeSelector`, `affinity` and `tolerations` (Kubernetes
//! semantics).

use super::syntax::{is_label_key, is_label_value};
use super::{Report, P};
use crate::spec::affinity::{NodeSelectorRequirement, PodAffinity};
use crate::spec::vmi::VmiSpec;

const NODE_OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"];
const SELECTOR_OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist"];

pub(super) fn validate_placement(spec: &VmiSpec, p: &P, r: &mut Report) {
    for (k, v) in &spec.node_selector {
        let kp = p.field("nodeSelector").field(k);
        if !is_label_key(k) {
            r.error(&kp, format!("{k:?} is not a valid label key"));
        }
        if !is_label_value(v) {
            r.error(&kp, format!("{v:?} is not a valid label value"));
        }
    }
    if let Some(aff) = &spec.affinity {
        let ap = p.field("affinity");
        if let Some(na) = &aff.node_affinity {
            let np = ap.field("nodeAffinity");
            if let Some(req) = &na.required_during_scheduling_ignored_during_execution {
                let rp = np.field("requiredDuringSchedulingIgnoredDuringExecution");
                if req.node_selector_terms.is_empty() {
                    r.error(
                        rp.field("nodeSelectorTerms"),
                        "at least one term is required",
                    );
                }
                for (i, t) in req.node_selector_terms.iter().enumerate() {
                    let tp = rp.field("nodeSelectorTerms").index(i);
                    for (j, e) in t.match_expressions.iter().enumerate() {
                        requirement(e, &tp.field("matchExpressions").index(j), NODE_OPERATORS, r);
                    }
                }
            }
            for (i, t) in na
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                let tp = np
                    .field("preferredDuringSchedulingIgnoredDuringExecution")
                    .index(i);
                weight(t.weight, &tp, r);
                for (j, e) in t.preference.match_expressions.iter().enumerate() {
                    requirement(
                        e,
                        &tp.field("preference").field("matchExpressions").index(j),
                        NODE_OPERATORS,
                        r,
                    );
                }
            }
        }
        for (field, pa) in [
            ("podAffinity", &aff.pod_affinity),
            ("podAntiAffinity", &aff.pod_anti_affinity),
        ] {
            if let Some(pa) = pa {
                pod_affinity(pa, &ap.field(field), r);
            }
        }
    }
    for (i, t) in spec.tolerations.iter().enumerate() {
        let tp = p.field("tolerations").index(i);
        let op = t.operator.as_deref().unwrap_or("Equal");
        match op {
            "Equal" => {}
            "Exists" => {
                if t.value.as_deref().is_some_and(|v| !v.is_empty()) {
                    r.error(tp.field("value"), "must be empty when operator is Exists");
                }
            }
            other => r.error(
                tp.field("operator"),
                format!("unknown operator {other:?}; allowed: Equal, Exists"),
            ),
        }
        if let Some(e) = &t.effect {
            if !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&e.as_str()) {
                r.error(
                    tp.field("effect"),
                    format!(
                        "unknown effect {e:?}; allowed: NoSchedule, PreferNoSchedule, NoExecute"
                    ),
                );
            }
        }
        if let Some(k) = &t.key {
            if !k.is_empty() && !is_label_key(k) {
                r.error(tp.field("key"), format!("{k:?} is not a valid label key"));
            }
        }
    }
}

fn pod_affinity(pa: &PodAffinity, pp: &P, r: &mut Report) {
    let terms = pa
        .required_during_scheduling_ignored_during_execution
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                pp.field("requiredDuringSchedulingIgnoredDuringExecution")
                    .index(i),
                t,
            )
        })
        .chain(
            pa.preferred_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let wp = pp
                        .field("preferredDuringSchedulingIgnoredDuringExecution")
                        .index(i);
                    weight(w.weight, &wp, r);
                    (wp.field("podAffinityTerm"), &w.pod_affinity_term)
                }),
        )
        .collect::<Vec<_>>();
    for (tp, t) in terms {
        if t.topology_key.is_empty() {
            r.error(tp.field("topologyKey"), "topologyKey is required");
        }
        if let Some(sel) = &t.label_selector {
            for (j, e) in sel.match_expressions.iter().enumerate() {
                requirement(
                    e,
                    &tp.field("labelSelector").field("matchExpressions").index(j),
                    SELECTOR_OPERATORS,
                    r,
                );
            }
        }
    }
}

fn weight(w: i64, p: &P, r: &mut Report) {
    if !(1..=100).contains(&w) {
        r.error(
            p.field("weight"),
            format!("weight {w} is out of range 1..100"),
        );
    }
}

fn requirement(e: &NodeSelectorRequirement, p: &P, operators: &[&str], r: &mut Report) {
    if !is_label_key(&e.key) {
        r.error(
            p.field("key"),
            format!("{:?} is not a valid label key", e.key),
        );
    }
    match e.operator.as_str() {
        "In" | "NotIn" => {
            if e.values.is_empty() {
                r.error(
                    p.field("values"),
                    format!("operator {} needs at least one value", e.operator),
                );
            }
        }
        "Exists" | "DoesNotExist" => {
            if !e.values.is_empty() {
                r.error(
                    p.field("values"),
                    format!("operator {} takes no values", e.operator),
                );
            }
        }
        "Gt" | "Lt" if operators.contains(&e.operator.as_str()) => {
            if e.values.len() != 1 || e.values[0].parse::<i64>().is_err() {
                r.error(
                    p.field("values"),
                    format!("operator {} needs exactly one integer value", e.operator),
                );
            }
        }
        other => r.error(
            p.field("operator"),
            format!(
                "unknown operator {other:?}; allowed: {}",
                operators.join(", ")
            ),
        ),
    }
}
