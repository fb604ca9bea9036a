{{/* Names, labels and the pieces every driver container shares. */}}

{{- define "cloudbucket-csi.name" -}}cloudbucket-csi{{- end -}}
{{- define "cloudbucket-csi.driverName" -}}cloudbucket.csi.io{{- end -}}

{{- define "cloudbucket-csi.fullname" -}}
{{- if contains "cloudbucket-csi" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-cloudbucket-csi" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cloudbucket-csi.labels" -}}
app.kubernetes.io/name: cloudbucket-csi
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cloudbucket-csi.selector" -}}
app.kubernetes.io/name: cloudbucket-csi
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cloudbucket-csi.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "cloudbucket-csi.nodeServiceAccount" -}}
{{- .Values.serviceAccount.node.name | default (printf "%s-node" (include "cloudbucket-csi.fullname" .)) -}}
{{- end -}}

{{- define "cloudbucket-csi.controllerServiceAccount" -}}
{{- .Values.serviceAccount.controller.name | default (printf "%s-controller" (include "cloudbucket-csi.fullname" .)) -}}
{{- end -}}

{{- define "cloudbucket-csi.caConfigMap" -}}
{{- .Values.caBundle.existingConfigMap | default (printf "%s-ca" (include "cloudbucket-csi.fullname" .)) -}}
{{- end -}}

{{- define "cloudbucket-csi.hasCA" -}}
{{- if or .Values.caBundle.pem .Values.caBundle.existingConfigMap -}}true{{- end -}}
{{- end -}}

{{- define "cloudbucket-csi.mounterSocket" -}}
{{ .Values.node.stateDir }}/mounter/mounter.sock
{{- end -}}

{{/* Environment of every driver container: logging, proxy, CA bundle, extra env. */}}
{{- define "cloudbucket-csi.driverEnv" -}}
- name: CLOUDBUCKET_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: CLOUDBUCKET_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.proxy.http }}
- name: HTTP_PROXY
  value: {{ . | quote }}
{{- end }}
{{- with .Values.proxy.https }}
- name: HTTPS_PROXY
  value: {{ . | quote }}
{{- end }}
{{- with .Values.proxy.noProxy }}
- name: NO_PROXY
  value: {{ . | quote }}
{{- end }}
{{- if include "cloudbucket-csi.hasCA" . }}
{{- range list "AWS_CA_BUNDLE" "REQUESTS_CA_BUNDLE" "SSL_CERT_FILE" }}
- name: {{ . }}
  value: /etc/cloudbucket-csi/ca/ca.crt
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "cloudbucket-csi.caVolumeMount" -}}
{{- if include "cloudbucket-csi.hasCA" . }}
- name: ca-bundle
  mountPath: /etc/cloudbucket-csi/ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "cloudbucket-csi.caVolume" -}}
{{- if include "cloudbucket-csi.hasCA" . }}
- name: ca-bundle
  configMap:
    name: {{ include "cloudbucket-csi.caConfigMap" . }}
    items:
      - key: {{ .Values.caBundle.key }}
        path: ca.crt
{{- end }}
{{- end -}}

{{/* The node-local cache: environment, mount and host volume (node plugin and mounter). */}}
{{- define "cloudbucket-csi.cacheEnv" -}}
{{- if .Values.node.cacheHostPath }}
- name: CLOUDBUCKET_CACHE_ROOT
  value: {{ .Values.node.cacheHostPath | quote }}
- name: CLOUDBUCKET_CACHE_DEFAULT_MAX_SIZE_MIB
  value: {{ .Values.node.cacheDefaultMaxSizeMiB | int | quote }}
- name: CLOUDBUCKET_CACHE_RETENTION_SECONDS
  value: {{ .Values.node.cacheRetentionSeconds | int | quote }}
{{- end }}
{{- end -}}

{{- define "cloudbucket-csi.cacheVolumeMount" -}}
{{- if .Values.node.cacheHostPath }}
- name: cache-dir
  mountPath: {{ .Values.node.cacheHostPath }}
{{- end }}
{{- end -}}

{{- define "cloudbucket-csi.cacheVolume" -}}
{{- if .Values.node.cacheHostPath }}
- name: cache-dir
  hostPath:
    path: {{ .Values.node.cacheHostPath }}
    type: DirectoryOrCreate
{{- end }}
{{- end -}}
