//! What the operator console shows beyond the Prometheus text: this replica's time series
//! (`series.rs`, sampled from the metrics once a second). The `/admin/stats` view that puts them
//! together with the cluster view, the log's extent and the most recent events is the HTTP edge's
//! (`http::console::stats`).

pub mod series;
