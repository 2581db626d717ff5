//! `math`: statistics over an array of numbers.
//!
//! Input `{values: [numbers]}`; output `{count, sum, mean, min, max, median,
//! stddev}` (population standard deviation). An empty array gives `count: 0`,
//! `sum: 0` and nulls for the rest.

use sandflow_sdk::{Describe, Error, Step};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    values: Vec<f64>,
}

#[derive(Serialize)]
struct Stats {
    count: usize,
    sum: f64,
    mean: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    median: Option<f64>,
    stddev: Option<f64>,
}

struct Math;

impl Step for Math {
    type Input = Input;
    type Output = Stats;

    fn run(input: Input) -> Result<Stats, Error> {
        let mut v = input.values;
        let count = v.len();
        let sum: f64 = v.iter().sum();
        if count == 0 {
            return Ok(Stats { count, sum, mean: None, min: None, max: None, median: None, stddev: None });
        }
        v.sort_by(f64::total_cmp);
        let n = count as f64;
        let mean = sum / n;
        let median = if count % 2 == 1 { v[count / 2] } else { (v[count / 2 - 1] + v[count / 2]) / 2.0 };
        let variance = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Ok(Stats {
            count,
            sum,
            mean: Some(mean),
            min: v.first().copied(),
            max: v.last().copied(),
            median: Some(median),
            stddev: Some(variance.sqrt()),
        })
    }

    fn describe() -> Describe {
        Describe {
            description: "Count, sum, mean, min, max, median and standard deviation of numbers."
                .into(),
            input_schema: Some(json!({
                "type": "object",
                "required": ["values"],
                "properties": { "values": { "type": "array", "items": { "type": "number" } } }
            })),
            output_schema: None,
        }
    }
}

sandflow_sdk::export_step!(Math);
