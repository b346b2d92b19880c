{{/* Labels every object carries. */}}
{{- define "hearth.labels" -}}
app.kubernetes.io/name: hearth
{{- end }}

{{/* The agent's configuration file, from the values. */}}
{{- define "hearth.config" -}}
{{- $v := .Values -}}
{{- $config := dict "frequency" $v.frequency "export_interval" $v.exportInterval "events" $v.events "mode" $v.mode -}}
{{- $scope := dict -}}
{{- with $v.scope.cgroups }}{{ $_ := set $scope "cgroups" . }}{{ end -}}
{{- with $v.scope.namespaces }}{{ $_ := set $scope "namespaces" . }}{{ end -}}
{{- with $v.scope.podSelector }}{{ $_ := set $scope "pod_selector" . }}{{ end -}}
{{- if $scope }}{{ $_ := set $config "scope" $scope }}{{ end -}}
{{- with $v.otlp.endpoint }}{{ $_ := set $config "otlp" (dict "endpoint" . "protocol" $v.otlp.protocol) }}{{ end -}}
{{- with $v.pyroscope.url }}{{ $_ := set $config "pyroscope" (dict "url" .) }}{{ end -}}
{{- $_ := set $config "queue" (dict "max_bytes" $v.queue.maxBytes "max_age" $v.queue.maxAge) -}}
{{- $_ := set $config "spool" (dict "dir" "/var/lib/hearth/spool" "max_bytes" $v.spool.maxBytes) -}}
{{- $_ := set $config "metrics" (dict "listen" (printf "0.0.0.0:%d" (int $v.metrics.port))) -}}
{{- $control := dict "socket" "/run/hearth/control.sock" -}}
{{- if $v.control.tcp.enabled }}
{{- $_ := set $control "listen" (printf "0.0.0.0:%d" (int $v.control.tcp.port)) -}}
{{- $_ := set $control "token_file" "/etc/hearth/control/token" -}}
{{- end -}}
{{- $_ := set $config "control" $control -}}
{{- toYaml (mustMergeOverwrite $config (deepCopy $v.extraConfig)) -}}
{{- end }}
