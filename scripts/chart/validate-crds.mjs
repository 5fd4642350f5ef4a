// Validates custom resources rendered by the chart against validators generated from their CRD
// schemas (npm: @kubernetes-models/prometheus-operator, @kubernetes-models/gateway-api).
// Input: a JSON file holding [{"source": "...", "doc": {...}}]. Output: one JSON line per document
// {"source","kind","ok","error"?}. These validators check types, enums, patterns, ranges and
// required fields; they do NOT reject unknown fields (the generated schemas leave
// additionalProperties open), so a misspelled optional field passes here.
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";

const models = {
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "gateway.networking.k8s.io/v1/HTTPRoute": HTTPRoute,
};

const items = JSON.parse(readFileSync(process.argv[2], "utf8"));
for (const { source, doc } of items) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const Model = models[key];
  if (!Model) {
    console.log(JSON.stringify({ source, kind: key, ok: false, error: "no validator for this kind" }));
    continue;
  }
  try {
    new Model(doc).validate();
    console.log(JSON.stringify({ source, kind: key, ok: true }));
  } catch (e) {
    console.log(JSON.stringify({ source, kind: key, ok: false, error: String(e.message || e) }));
  }
}
