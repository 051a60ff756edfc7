//! The `error_cap` allocator (see the crate docs).

use tenpak_api::{
    Allocator, AllocatorConfig, Error, LayerInfo, LayerPlan, ParamSpec, ParamType, Plan, Probe, Result, StatsNeeds,
    param_one_of, validate_params,
};

const ID: &str = "error_cap";

const PARAMS: &[ParamSpec] = &[
    ParamSpec { name: "max_error", ty: ParamType::Float, default: "0.01", doc: "relative error each block linear may have" },
    ParamSpec {
        name: "measure",
        ty: ParamType::Str,
        default: "\"output\"",
        doc: "output: tr(E G E^T)/tr(W G W^T) on the calibration text; weight: |E|^2/|W|^2",
    },
];

/// See the crate docs.
#[derive(Debug, Default)]
pub struct ErrorCap;

fn max_error(config: &AllocatorConfig) -> Result<f64> {
    let cap = config.params.float_or("max_error", 0.01)?;
    if !(cap.is_finite() && cap > 0.0) {
        return Err(Error::invalid_param(format!("{ID}: max_error must be a positive number, got {cap}")));
    }
    Ok(cap)
}

fn output_measure(config: &AllocatorConfig) -> Result<bool> {
    let measure = config.params.str_or("measure", "output")?;
    param_one_of(ID, "measure", measure, &["output", "weight"])?;
    Ok(measure == "output")
}

impl Allocator for ErrorCap {
    fn id(&self) -> &str {
        ID
    }

    fn description(&self) -> &str {
        "example plugin: each block linear gets the smallest candidate whose measured error is under max_error"
    }

    fn params(&self) -> &[ParamSpec] {
        PARAMS
    }

    fn needs(&self, config: &AllocatorConfig) -> StatsNeeds {
        // An invalid `measure` is reported by `validate`; here it falls back to the default.
        if output_measure(config).unwrap_or(true) { StatsNeeds { gram: true, ..StatsNeeds::NONE } } else { StatsNeeds::NONE }
    }

    fn validate(&self, config: &AllocatorConfig) -> Result<()> {
        validate_params(ID, PARAMS, &config.params)?;
        max_error(config)?;
        output_measure(config)?;
        if config.candidates.is_empty() {
            return Err(Error::invalid_param(format!(
                "{ID}: no [[allocator.candidates]]: give the configurations it may choose from"
            )));
        }
        Ok(())
    }

    fn plan(&self, layers: &[LayerInfo], config: &AllocatorConfig, probe: &mut dyn Probe) -> Result<Plan> {
        self.validate(config)?;
        let (cap, output) = (max_error(config)?, output_measure(config)?);
        let mut plan = Plan::default();
        for (index, layer) in layers.iter().enumerate() {
            let base = config.resolve(layer)?;
            if !(layer.role.is_block_linear() && layer.block.is_some()) {
                plan.layers.push(base);
                continue;
            }
            // (bits, error, candidate): the smallest under the cap, else the most accurate.
            let mut best: Option<(u64, f64, LayerPlan)> = None;
            let mut closest: Option<(u64, f64, LayerPlan)> = None;
            for candidate in &config.candidates {
                let mut tried = base.clone();
                tried.apply(candidate);
                let result = probe.try_codec(index, &tried.codec, &tried.params)?;
                let error = if output {
                    result.output_error.ok_or_else(|| {
                        Error::invalid_input(format!("{ID}: the host measured no output error for `{}`", layer.name))
                    })?
                } else {
                    result.rel_mse
                };
                if error.is_nan() {
                    return Err(Error::invalid_input(format!("{ID}: `{}` measured a NaN error with {}", layer.name, tried.codec)));
                }
                let entry = (result.bits, error, tried);
                if error <= cap && best.as_ref().is_none_or(|b| (entry.0, entry.1) < (b.0, b.1)) {
                    best = Some(entry.clone());
                }
                if closest.as_ref().is_none_or(|c| (entry.1, entry.0) < (c.1, c.0)) {
                    closest = Some(entry);
                }
            }
            let (_, _, chosen) = best.or(closest).expect("validate: at least one candidate");
            plan.layers.push(chosen);
        }
        Ok(plan)
    }
}
