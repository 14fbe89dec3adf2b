{{/* Names and labels, as `helm create` and prometheus-node-exporter make them. */}}
{{- define "otel-vmi-hv.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "otel-vmi-hv.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "otel-vmi-hv.selectorLabels" -}}
app.kubernetes.io/name: {{ include "otel-vmi-hv.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node-agent
{{- end }}

{{- define "otel-vmi-hv.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "otel-vmi-hv.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "otel-vmi-hv.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "otel-vmi-hv.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "otel-vmi-hv.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The agent's environment, config/kubernetes/daemonset.yaml's (explained there), then what the values
switch on. The DaemonSet template drops each entry that extraEnv names again and appends extraEnv.
*/}}
{{- define "otel-vmi-hv.env" -}}
- name: OTEL_VMI_HV_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: OTEL_VMI_HV_SOURCE
  value: kubernetes
{{- if eq .Values.mode "kubevirt" }}
- name: OTEL_VMI_HV_PODS_ROOT
  value: /pods
{{- end }}
- name: OTEL_VMI_HV_LIBVIRT_URI
  value: ""
- name: OTEL_VMI_HV_LIBVIRT_TIMEOUT
  value: 5s
- name: OTEL_VMI_HV_LOG_LEVEL
  value: info
- name: OTEL_SERVICE_NAME
  value: otel-vmi-hv
- name: OTEL_METRICS_EXPORTER
  value: prometheus,otlp
- name: OTEL_EXPORTER_PROMETHEUS_PORT
  value: "9464"
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: http://otel-collector.observability.svc:4317
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: grpc
- name: OTEL_METRIC_EXPORT_INTERVAL
  value: "60000"
- name: OTEL_RESOURCE_ATTRIBUTES_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: OTEL_RESOURCE_ATTRIBUTES_POD_UID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
- name: OTEL_RESOURCE_ATTRIBUTES_POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_RESOURCE_ATTRIBUTES
  value: >-
    k8s.namespace.name=$(OTEL_RESOURCE_ATTRIBUTES_POD_NAMESPACE),
    k8s.pod.name=$(OTEL_RESOURCE_ATTRIBUTES_POD_NAME),
    k8s.pod.uid=$(OTEL_RESOURCE_ATTRIBUTES_POD_UID),
    k8s.daemonset.name={{ include "otel-vmi-hv.fullname" . }},
    k8s.container.name=otel-vmi-hv
{{- if eq .Values.mode "proc" }}
- name: OTEL_VMI_HV_PROC_ROOT
  value: /host/proc
{{- end }}
{{- if not .Values.events.enabled }}
- name: OTEL_VMI_HV_EVENTS
  value: "false"
{{- end }}
{{- if .Values.tls.enabled }}
- name: OTEL_VMI_HV_TLS_CERT_FILE
  value: /etc/otel-vmi-hv/tls/tls.crt
- name: OTEL_VMI_HV_TLS_KEY_FILE
  value: /etc/otel-vmi-hv/tls/tls.key
{{- end }}
{{- end }}
