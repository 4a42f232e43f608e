//! SQL for metrics: series and their points.
