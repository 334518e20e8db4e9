//! The words the support desk uses: what each status and stage means to a customer, how long
//! things took, and what each error code means — in sentences a support agent can repeat to a
//! customer, with the code kept for developers.

use std::time::Duration;

use domain::{OrderStatus, Stage};

/// What happened when the order reached `status`.
pub fn status_event(status: OrderStatus) -> &'static str {
    use OrderStatus::*;
    match status {
        Created => "Order received by the shop",
        Submitted => "Handed over to order registration",
        Registered => "Registered; price requested",
        Pricing => "Price calculation started",
        Priced => "Price calculated; sent to the customer",
        Confirmed => "Price accepted by the customer",
        InProduction => "Production started",
        QualityCheck => "In quality check",
        Ready => "Ready to ship",
        Shipped => "Shipped",
        Delivered => "Delivered",
        Rejected => "Rejected",
        Cancelled => "Cancelled",
        Failed => "Failed",
    }
}

/// What an order in `stage` is waiting for ("waiting for customer confirmation").
pub fn waiting_for(stage: Stage) -> &'static str {
    match stage {
        Stage::Intake => "waiting for the shop to hand it over",
        Stage::Registration => "waiting to be registered",
        Stage::PricingQueue => "waiting for the price calculation to start",
        Stage::Pricing => "waiting for the price calculation",
        Stage::CustomerConfirmation => "waiting for customer confirmation",
        Stage::ProductionQueue => "waiting for production to start",
        Stage::Production => "in production",
        Stage::QualityCheck => "in quality check",
        Stage::Shipping => "waiting to be shipped",
        Stage::Delivery => "waiting for delivery to be confirmed",
        Stage::Done => "finished",
    }
}

/// Who the order waits on in `stage`, as a customer would understand it.
pub fn waiting_on(stage: Stage) -> &'static str {
    match stage {
        Stage::CustomerConfirmation => "the customer",
        Stage::Intake => "the shop",
        Stage::Registration | Stage::Shipping | Stage::Delivery => "order management",
        Stage::PricingQueue | Stage::Pricing => "the price calculation",
        Stage::ProductionQueue | Stage::Production | Stage::QualityCheck => "the workshop",
        Stage::Done => "nobody",
    }
}

/// A duration as people say it, to its two largest units: `2 d 4 h`, `3 h 5 min`, `12 min`,
/// `45 s`.
pub fn duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let units = [(86_400, "d"), (3_600, "h"), (60, "min"), (1, "s")];
    let Some(first) = units.iter().position(|(size, _)| seconds >= *size) else {
        return "0 s".to_owned();
    };
    let mut rest = seconds;
    let mut parts = Vec::new();
    for (size, unit) in &units[first..(first + 2).min(units.len())] {
        let count = rest / size;
        rest -= count * size;
        if count > 0 {
            parts.push(format!("{count} {unit}"));
        }
    }
    parts.join(" ")
}

/// [`duration`] of a chrono duration, negative ones as zero.
pub fn chrono_duration(duration: chrono::Duration) -> String {
    self::duration(duration.to_std().unwrap_or_default())
}

/// What `code` (`hallmark.error.code`) means, for a customer; `None` for a code no service
/// sends today (the answer then says so, with the code).
pub fn error_in_words(code: &str) -> Option<&'static str> {
    Some(match code {
        "stl_empty" => {
            "The uploaded 3D model is empty (it contains no surfaces). The customer needs to export the part as a solid STL file and upload it again."
        }
        "stl_unreadable" => {
            "The uploaded file is not a readable 3D model (STL). The customer needs to export it again as STL and upload it."
        }
        "stl_not_closed" => {
            "The 3D model is not a closed solid: its surface has holes, so the piece cannot be made from it. The customer needs to repair the model (make it watertight) and upload it again."
        }
        "stl_zero_volume" => {
            "The 3D model encloses no volume, so no metal weight or price can be worked out. The customer needs to export the part as a solid and upload it again."
        }
        "stl_too_many_triangles" => {
            "The 3D model is far more detailed than any piece of jewellery needs. The customer needs to export it at a coarser resolution and upload it again."
        }
        "stl_too_many_bodies" => {
            "The 3D model is made of too many separate parts. The customer needs to join them into fewer solids and upload it again."
        }
        "stl_too_intricate" => {
            "The parts of the 3D model overlap and nest too intricately to be measured. The customer needs to join them into fewer solids and upload it again."
        }
        "calc_engine_failed" => {
            "The price could not be calculated because of a technical fault on our side, after several attempts. The workshop has been notified and will contact the customer."
        }
        "timeout" | "crashed" | "spawn_failed" | "bad_output" | "io" => {
            "An attempt to calculate the price failed for a technical reason on our side; it is retried automatically."
        }
        "model_unavailable" => {
            "The 3D model could not be read from storage for the price calculation; it is retried automatically."
        }
        "model_not_of_order" => {
            "The order referred to a 3D model that does not belong to it, so it was not processed. The technical team needs to look at it; the customer may have to upload the model again."
        }
        "order_unknown" | "order_not_found" => {
            "A message arrived about this order at a system that does not know it (yet). The technical team needs to look at it."
        }
        "message_malformed" => {
            "A message about this order could not be read, so it was set aside. The technical team needs to look at it."
        }
        "forged_sender" => {
            "A message about this order did not come from the system entitled to send it, so it was refused and set aside. The technical team needs to look at it."
        }
        "database_unavailable" | "database_error" | "dependency_unavailable" => {
            "A system handling the order was briefly unavailable; the step is retried automatically."
        }
        "registration_failed" => {
            "Registering the order failed for a technical reason; it is retried automatically."
        }
        "pricing_not_started" => {
            "The price calculation could not be started for a technical reason; it is retried automatically."
        }
        "corrupt_record" => {
            "A system holds a damaged record of the order, so it cannot move on. The technical team needs to repair it."
        }
        "illegal_transition" => {
            "A step was refused because the order was not in a state that allows it (for example a confirmation after a cancellation)."
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        let d = |s: u64| duration(Duration::from_secs(s));
        assert_eq!(d(0), "0 s");
        assert_eq!(d(45), "45 s");
        assert_eq!(d(12 * 60 + 30), "12 min 30 s");
        assert_eq!(d(3 * 3600 + 5 * 60 + 9), "3 h 5 min");
        assert_eq!(d(2 * 86_400 + 4 * 3600 + 59), "2 d 4 h");
        assert_eq!(d(7 * 86_400), "7 d");
        assert_eq!(chrono_duration(chrono::Duration::seconds(-5)), "0 s");
    }

    #[test]
    fn every_code_the_services_send_has_words() {
        // domain's model errors, MES's calculation failures, the consumers' and the order
        // book's codes.
        for code in [
            "stl_empty",
            "stl_unreadable",
            "stl_not_closed",
            "stl_zero_volume",
            "stl_too_many_triangles",
            "stl_too_many_bodies",
            "stl_too_intricate",
            "calc_engine_failed",
            "timeout",
            "crashed",
            "spawn_failed",
            "bad_output",
            "io",
            "model_unavailable",
            "model_not_of_order",
            "order_unknown",
            "order_not_found",
            "message_malformed",
            "forged_sender",
            "database_unavailable",
            "database_error",
            "dependency_unavailable",
            "registration_failed",
            "pricing_not_started",
            "corrupt_record",
            "illegal_transition",
        ] {
            assert!(error_in_words(code).is_some(), "{code}");
        }
        use domain::stl::StlError;
        for model in [
            StlError::Empty,
            StlError::Unreadable(String::new()),
            StlError::NotClosed {
                open_edges: 1,
                non_manifold_edges: 0,
            },
            StlError::NotOrientable,
            StlError::ZeroVolume,
            StlError::TooManyTriangles { triangles: 0 },
            StlError::TooManyBodies { bodies: 0 },
            StlError::TooIntricate,
        ] {
            assert!(error_in_words(model.code()).is_some(), "{}", model.code());
        }
        assert_eq!(error_in_words("something_new"), None);
    }

    #[test]
    fn every_stage_says_what_it_waits_for() {
        assert_eq!(
            waiting_for(Stage::CustomerConfirmation),
            "waiting for customer confirmation"
        );
        for stage in Stage::ALL {
            assert!(!waiting_for(stage).is_empty());
            assert!(!waiting_on(stage).is_empty());
        }
    }
}
