{{/* Names and labels. */}}
{{- define "kubestow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "kubestow.labels" -}}
app.kubernetes.io/name: kubestow
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kubestow.secretName" -}}
{{- .Values.secret.existingSecret | default (printf "%s-credentials" (include "kubestow.fullname" .)) -}}
{{- end -}}

{{/* "true" when some pod takes its credentials from the chart's Secret: a
plan without its own existingSecret, check, copy or the restore template. */}}
{{- define "kubestow.needsSecret" -}}
{{- $need := or .Values.check.enabled .Values.copy.enabled .Values.restore.enabled -}}
{{- range .Values.plans -}}{{- if not .existingSecret -}}{{- $need = true -}}{{- end -}}{{- end -}}
{{- if $need -}}true{{- end -}}
{{- end -}}

{{/* The name of plan p's CronJob (for an immediate plan, the start of its
Job's name): <fullname>-<plan>, at most 52
characters (the CronJob controller appends 11 to its Jobs' names). Input:
list root plan-name. */}}
{{- define "kubestow.planName" -}}
{{- printf "%s-%s" (include "kubestow.fullname" (index . 0)) (index . 1) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* The suspended CronJob that restores are created from. */}}
{{- define "kubestow.restoreTemplateName" -}}
{{- printf "%s-restore" (include "kubestow.fullname" .) -}}
{{- end -}}

{{- define "kubestow.sa" -}}
{{- $root := index . 0 -}}{{- $kind := index . 1 -}}
{{- (index $root.Values.serviceAccounts $kind).name | default (printf "%s-%s" (include "kubestow.fullname" $root) $kind) -}}
{{- end -}}

{{- define "kubestow.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* CronJob API: batch/v1 from 1.21, batch/v1beta1 before. */}}
{{- define "kubestow.cronJobApiVersion" -}}
{{- if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version -}}batch/v1{{- else -}}batch/v1beta1{{- end -}}
{{- end -}}

{{/* podFailurePolicy: auto = Kubernetes 1.26+. */}}
{{- define "kubestow.podFailurePolicy" -}}
{{- $p := toString .Values.job.podFailurePolicy -}}
{{- if or (eq $p "true") (and (eq $p "auto") (semverCompare ">=1.26-0" .Capabilities.KubeVersion.Version)) -}}true{{- end -}}
{{- end -}}

{{/*
Schedule translation. Input: dict "root" . "name" plan-name "schedule" block.
Output: JSON {cron, minInterval, once, lastDay, immediate, timeZone}.
*/}}
{{- define "kubestow.schedule" -}}
{{- $root := .root -}}
{{- $s := .schedule | default dict -}}
{{- $type := $s.type | default "daily" -}}
{{- $wd := dict "sun" 0 "mon" 1 "tue" 2 "wed" 3 "thu" 4 "fri" 5 "sat" 6 "sunday" 0 "monday" 1 "tuesday" 2 "wednesday" 3 "thursday" 4 "friday" 5 "saturday" 6 -}}
{{- $mo := dict "jan" 1 "feb" 2 "mar" 3 "apr" 4 "may" 5 "jun" 6 "jul" 7 "aug" 8 "sep" 9 "oct" 10 "nov" 11 "dec" 12 -}}
{{- $at := splitList ":" (toString ($s.at | default "02:00")) -}}
{{- if ne (len $at) 2 -}}{{- fail (printf "plan %s: schedule.at must be HH:MM, got %v" .name $s.at) -}}{{- end -}}
{{- $hour := atoi (index $at 0) -}}
{{- $minute := atoi (index $at 1) -}}
{{- if or (gt $hour 23) (gt $minute 59) (lt $hour 0) (lt $minute 0) -}}{{- fail (printf "plan %s: schedule.at %v is not a time of day" .name $s.at) -}}{{- end -}}
{{- $hash := atoi (adler32sum (printf "%s%s" (toString $root.Values.randomizeSeed) .name)) -}}
{{- $spread := int ($s.spreadHours | default 1) -}}
{{- if $s.randomize -}}
{{- $minute = mod $hash 60 -}}
{{- $hour = mod (add $hour (mod (div $hash 60) $spread)) 24 -}}
{{- end -}}
{{- $out := dict "cron" "" "minInterval" "" "once" false "lastDay" false "immediate" false "timeZone" ($s.timeZone | default $root.Values.timeZone | default "") -}}
{{- $every := int ($s.every | default 1) -}}
{{- if lt $every 1 -}}{{- fail (printf "plan %s: schedule.every must be 1 or more" .name) -}}{{- end -}}
{{- if eq $type "immediate" -}}
{{- $_ := set $out "immediate" true -}}
{{- else if eq $type "cron" -}}
{{- $_ := set $out "cron" (required (printf "plan %s: schedule.cron is required for type cron" .name) $s.cron) -}}
{{- else if eq $type "once" -}}
{{- $_ := set $out "once" true -}}
{{- if $s.date -}}
{{- $d := splitList "-" (toString $s.date) -}}
{{- if ne (len $d) 3 -}}{{- fail (printf "plan %s: schedule.date must be YYYY-MM-DD" .name) -}}{{- end -}}
{{- $_ := set $out "cron" (printf "%d %d %d %d *" $minute $hour (atoi (index $d 2)) (atoi (index $d 1))) -}}
{{- else -}}
{{- $_ := set $out "cron" (printf "%d %d * * *" $minute $hour) -}}
{{- end -}}
{{- else if eq $type "hourly" -}}
{{- $from := splitList ":" (toString ($s.from | default "00:00")) -}}
{{- $to := splitList ":" (toString ($s.to | default "24:00")) -}}
{{- $fh := atoi (index $from 0) -}}{{- $fm := atoi (index $from 1) -}}
{{- $th := atoi (index $to 0) -}}{{- $tm := atoi (index $to 1) -}}
{{- if ge (add (mul $fh 60) $fm) (add (mul $th 60) $tm) -}}{{- fail (printf "plan %s: schedule.from must be before schedule.to (ranges over midnight: use two plans)" .name) -}}{{- end -}}
{{- if $s.everyMinutes -}}
{{- $n := int $s.everyMinutes -}}
{{- if or (lt $n 1) (gt $n 59) -}}{{- fail (printf "plan %s: schedule.everyMinutes must be 1..59 (use every: N hours beyond)" .name) -}}{{- end -}}
{{- $start := mod $fm $n -}}
{{- if $s.randomize -}}{{- $start = mod $hash $n -}}{{- end -}}
{{- $last := $th -}}{{- if eq $tm 0 -}}{{- $last = sub $th 1 -}}{{- end -}}
{{- $hours := printf "%d-%d" $fh $last -}}
{{- if and (eq $fh 0) (eq $last 23) -}}{{- $hours = "*" -}}{{- else if eq $fh $last -}}{{- $hours = printf "%d" $fh -}}{{- end -}}
{{- $mins := printf "%d-59/%d" $start $n -}}
{{- if eq $n 1 -}}{{- $mins = "*" -}}{{- else if eq $start 0 -}}{{- $mins = printf "*/%d" $n -}}{{- end -}}
{{- $_ := set $out "cron" (printf "%s %s * * *" $mins $hours) -}}
{{- else -}}
{{- $m := $fm -}}{{- if $s.randomize -}}{{- $m = mod $hash 60 -}}{{- end -}}
{{- $last := $th -}}{{- if gt $m $tm -}}{{- $last = sub $th 1 -}}{{- end -}}
{{- if gt $last 23 -}}{{- $last = 23 -}}{{- end -}}
{{- $hours := "" -}}
{{- if and (eq $fh 0) (eq $last 23) -}}{{- $hours = "*" -}}{{- else -}}{{- $hours = printf "%d-%d" $fh $last -}}{{- end -}}
{{- if gt $every 1 -}}{{- if eq $hours "*" -}}{{- $hours = printf "*/%d" $every -}}{{- else -}}{{- $hours = printf "%s/%d" $hours $every -}}{{- end -}}{{- end -}}
{{- $_ := set $out "cron" (printf "%d %s * * *" $m $hours) -}}
{{- end -}}
{{- else if eq $type "daily" -}}
{{- $_ := set $out "cron" (printf "%d %d * * *" $minute $hour) -}}
{{- if gt $every 1 -}}{{- $_ := set $out "minInterval" (printf "%dh" (sub (mul $every 24) 12)) -}}{{- end -}}
{{- else if eq $type "weekly" -}}
{{- $days := list -}}
{{- range ($s.days | default (list "sun")) -}}
{{- $k := lower (toString .) -}}
{{- if not (hasKey $wd $k) -}}{{- fail (printf "unknown weekday %q (use sun..sat)" $k) -}}{{- end -}}
{{- $days = append $days (index $wd $k) -}}
{{- end -}}
{{- if and (gt $every 1) (gt (len $days) 1) -}}{{- fail (printf "plan %s: every N weeks needs exactly one weekday (use one plan per weekday)" .name) -}}{{- end -}}
{{- $_ := set $out "cron" (printf "%d %d * * %s" $minute $hour (join "," (uniq $days))) -}}
{{- if gt $every 1 -}}{{- $_ := set $out "minInterval" (printf "%dh" (mul (sub (mul $every 7) 1) 24)) -}}{{- end -}}
{{- else if eq $type "monthly" -}}
{{- if gt $every 1 -}}{{- fail (printf "plan %s: monthly schedules take months:, not every:" .name) -}}{{- end -}}
{{- $months := list -}}
{{- range ($s.months | default list) -}}
{{- $k := lower (toString .) | trunc 3 -}}
{{- if hasKey $mo $k -}}{{- $months = append $months (index $mo $k) -}}{{- else -}}
{{- $n := atoi (toString .) -}}
{{- if or (lt $n 1) (gt $n 12) -}}{{- fail (printf "unknown month %v" .) -}}{{- end -}}
{{- $months = append $months $n -}}{{- end -}}
{{- end -}}
{{- $monthField := "*" -}}{{- if $months -}}{{- $monthField = join "," (uniq $months) -}}{{- end -}}
{{- if and $s.days $s.weekdays -}}{{- fail (printf "plan %s: give days or weekdays, not both (cron would run on either)" .name) -}}{{- end -}}
{{- if $s.weekdays -}}
{{- $days := list -}}
{{- range $s.weekdays -}}
{{- $k := lower (toString .) -}}
{{- if not (hasKey $wd $k) -}}{{- fail (printf "unknown weekday %q (use sun..sat)" $k) -}}{{- end -}}
{{- $days = append $days (index $wd $k) -}}
{{- end -}}
{{- $_ := set $out "cron" (printf "%d %d * %s %s" $minute $hour $monthField (join "," (uniq $days))) -}}
{{- else -}}
{{- $dom := list -}}
{{- range ($s.days | default (list 1)) -}}
{{- if eq (lower (toString .)) "last" -}}{{- $_ := set $out "lastDay" true -}}{{- else -}}
{{- $n := atoi (toString .) -}}
{{- if or (lt $n 1) (gt $n 31) -}}{{- fail (printf "day of month %v is not 1..31 or last" .) -}}{{- end -}}
{{- $dom = append $dom $n -}}{{- end -}}
{{- end -}}
{{- if $out.lastDay -}}
{{- if $dom -}}{{- fail (printf "plan %s: days: [last] cannot be combined with other days (use two plans)" $.name) -}}{{- end -}}
{{- $_ := set $out "cron" (printf "%d %d 28-31 %s *" $minute $hour $monthField) -}}
{{- else -}}
{{- $_ := set $out "cron" (printf "%d %d %s %s *" $minute $hour (join "," (uniq $dom)) $monthField) -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- fail (printf "plan %s: unknown schedule type %q (immediate, once, hourly, daily, weekly, monthly, cron)" .name $type) -}}
{{- end -}}
{{- if and $out.timeZone (semverCompare "<1.27-0" $root.Capabilities.KubeVersion.Version) -}}
{{- fail (printf "plan %s: timeZone %s needs Kubernetes 1.27+ (CronJob spec.timeZone); this cluster is %s. Give the times in the controller-manager's zone (usually UTC) instead." .name $out.timeZone $root.Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
Job spec shared by every CronJob and Job.
Input: dict "root" . "component" name "mode" mode "env" (dict of STOW_* → value)
"sa" service-account kind "job" per-plan job overrides "resources" override
"noTTL" (true: no ttlSecondsAfterFinished, for Jobs that Helm or a GitOps
tool owns, which would create them again once the TTL deleted them).
*/}}
{{- define "kubestow.jobSpec" -}}
{{- $root := .root -}}
{{- $job := merge (deepCopy (.job | default dict)) $root.Values.job -}}
backoffLimit: {{ $job.backoffLimit }}
activeDeadlineSeconds: {{ $job.activeDeadlineSeconds }}
{{- if not .noTTL }}
ttlSecondsAfterFinished: {{ $job.ttlSecondsAfterFinished }}
{{- end }}
{{- if include "kubestow.podFailurePolicy" $root }}
podFailurePolicy:
  rules:
    # Exit code 2 is a configuration error: retrying cannot help.
    - action: FailJob
      onExitCodes:
        containerName: kubestow
        operator: In
        values: [2]
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
{{- end }}
template:
  metadata:
    labels:
      {{- include "kubestow.labels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ .component }}
      {{- with $root.Values.podLabels }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- with $root.Values.podAnnotations }}
    annotations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  spec:
    restartPolicy: Never
    serviceAccountName: {{ include "kubestow.sa" (list $root .sa) }}
    {{- with $root.Values.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- toYaml $root.Values.podSecurityContext | nindent 6 }}
    {{- with $root.Values.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $root.Values.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $root.Values.affinity }}
    affinity:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    containers:
      - name: kubestow
        image: {{ include "kubestow.image" $root }}
        imagePullPolicy: {{ $root.Values.image.pullPolicy }}
        terminationMessagePolicy: FallbackToLogsOnError
        envFrom:
          - secretRef:
              name: {{ .secretName | default (include "kubestow.secretName" $root) }}
        env:
          - name: STOW_MODE
            value: {{ .mode | quote }}
          {{- range $k, $v := .env }}
          {{- if and (ne (toString $v) "") (ne (toString $v) "<nil>") }}
          - name: {{ $k }}
            value: {{ toString $v | quote }}
          {{- end }}
          {{- end }}
          {{- range $k, $v := $root.Values.env }}
          {{- if not (hasKey $.env $k) }}
          - name: {{ $k }}
            value: {{ toString $v | quote }}
          {{- end }}
          {{- end }}
          # Downward API: the run id (Job name) and the pod, for mover Jobs and STOW_ONCE.
          - name: STOW_POD_NAME
            valueFrom:
              fieldRef:
                fieldPath: metadata.name
          - name: STOW_POD_NAMESPACE
            valueFrom:
              fieldRef:
                fieldPath: metadata.namespace
          - name: STOW_JOB_NAME
            valueFrom:
              fieldRef:
                fieldPath: metadata.labels['job-name']
          {{- with (include "kubestow.caBundleSource" $root) }}
          # The private CA (caBundle); mover Jobs mount the same volume.
          - name: SSL_CERT_FILE
            value: {{ printf "/etc/kubestow/ca/%s" $root.Values.caBundle.key | quote }}
          {{- end }}
        resources:
          {{- toYaml (.resources | default $root.Values.resources) | nindent 10 }}
        securityContext:
          {{- toYaml $root.Values.securityContext | nindent 10 }}
        volumeMounts:
          # The root filesystem is read-only; scratch space goes here.
          - name: tmp
            mountPath: /tmp
          {{- if (include "kubestow.caBundleSource" $root) }}
          - name: ca-bundle
            mountPath: /etc/kubestow/ca
            readOnly: true
          {{- end }}
    volumes:
      - name: tmp
        emptyDir: {}
      {{- with (include "kubestow.caBundleSource" $root) }}
      - name: ca-bundle
        {{- . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* The caBundle volume source (configMap or secret), or "" without one; both set fails. */}}
{{- define "kubestow.caBundleSource" -}}
{{- $ca := .Values.caBundle | default dict -}}
{{- if and $ca.configMap $ca.secret -}}
{{- fail "caBundle: set configMap or secret, not both" -}}
{{- else if $ca.configMap -}}
configMap:
  name: {{ $ca.configMap }}
{{- else if $ca.secret -}}
secret:
  secretName: {{ $ca.secret }}
{{- end -}}
{{- end -}}

{{/* CronJob wrapper: dict "root" "name" "component" "sched" (parsed) "suspend" "job" + jobSpec inputs. */}}
{{- define "kubestow.cronJob" -}}
{{- $root := .root -}}
{{- $job := merge (deepCopy (.job | default dict)) $root.Values.job -}}
apiVersion: {{ include "kubestow.cronJobApiVersion" $root }}
kind: CronJob
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kubestow.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  schedule: {{ .sched.cron | quote }}
  {{- if .sched.timeZone }}
  timeZone: {{ .sched.timeZone | quote }}
  {{- end }}
  concurrencyPolicy: Forbid
  startingDeadlineSeconds: {{ $job.startingDeadlineSeconds }}
  successfulJobsHistoryLimit: {{ $job.successfulJobsHistoryLimit }}
  failedJobsHistoryLimit: {{ $job.failedJobsHistoryLimit }}
  suspend: {{ .suspend | default false }}
  jobTemplate:
    metadata:
      labels:
        {{- include "kubestow.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
    spec:
      {{- include "kubestow.jobSpec" . | nindent 6 }}
{{- end -}}

{{/* STOW_* variables of a backup plan, as a dict. */}}
{{- define "kubestow.planEnv" -}}
{{- $root := .root -}}{{- $p := .plan -}}{{- $sched := .sched -}}
{{- $env := dict
  "STOW_PLAN" $p.name
  "STOW_REPOSITORY" ($p.repository | default $root.Values.repository)
  "STOW_INIT" ($p.init | default "")
  "STOW_NAMESPACES" ($p.namespaces | default "")
  "STOW_EXCLUDE_NAMESPACES" ($p.excludeNamespaces | default "")
  "STOW_INCLUDE_RESOURCES" ($p.includeResources | default "")
  "STOW_EXCLUDE_RESOURCES" ($p.excludeResources | default "")
  "STOW_LABEL_SELECTOR" ($p.labelSelector | default "")
  "STOW_INCLUDE_CLUSTER_RESOURCES" ($p.includeClusterResources | default "")
  "STOW_VOLUME_SOURCE" ($p.volumeSource | default "")
  "STOW_EXCLUDE_VOLUMES" ($p.excludeVolumes | default "")
  "STOW_CHANNELS" ($p.channels | default "")
  "STOW_RATE_LIMIT" ($p.rateLimit | default "")
  "STOW_TAGS" ($p.tags | default "")
  "STOW_COMPRESSION" ($p.compression | default "")
  "STOW_PRECONDITION" ($p.precondition | default "")
  "STOW_PRE_HOOKS" ($p.preHooks | default "")
  "STOW_POST_HOOKS" ($p.postHooks | default "")
  "STOW_MOVER_SERVICE_ACCOUNT" (include "kubestow.sa" (list $root "mover"))
  "STOW_MIN_INTERVAL" $sched.minInterval
  "STOW_TIMEZONE" $sched.timeZone
-}}
{{- if $sched.once }}{{ $_ := set $env "STOW_ONCE" "true" }}{{ end -}}
{{- if $sched.lastDay }}{{ $_ := set $env "STOW_LAST_DAY_OF_MONTH" "true" }}{{ end -}}
{{- if kindIs "slice" $p.tags }}{{ $_ := set $env "STOW_TAGS" (join "," $p.tags) }}{{ end -}}
{{- if kindIs "slice" $p.namespaces }}{{ $_ := set $env "STOW_NAMESPACES" (join "," $p.namespaces) }}{{ end -}}
{{- /* Hooks given as YAML lists (or a precondition as a map) use kubestow's JSON form. */ -}}
{{- if or (kindIs "slice" $p.precondition) (kindIs "map" $p.precondition) }}{{ $_ := set $env "STOW_PRECONDITION" (toJson $p.precondition) }}{{ end -}}
{{- if kindIs "slice" $p.preHooks }}{{ $_ := set $env "STOW_PRE_HOOKS" (toJson $p.preHooks) }}{{ end -}}
{{- if kindIs "slice" $p.postHooks }}{{ $_ := set $env "STOW_POST_HOOKS" (toJson $p.postHooks) }}{{ end -}}
{{- range $k, $v := ($p.env | default dict) }}{{ $_ := set $env $k $v }}{{ end -}}
{{- toJson $env -}}
{{- end -}}

{{/*
The namespaces the exec hooks and preconditions of one run name, as a JSON
list. Input: dict "name" (plan, for errors) "env" (its STOW_* variables).
Both forms kubestow accepts (src/config/hooks): a JSON array (a
precondition: also one object) of {"exec": {"namespace", …}, …}, or one
entry per line, `[key=value ...] exec:<ns>/<selector>/<container>:<cmd>`.
Every exec hook names its namespace, `scope=volume` ones too (they run in
the pods of that namespace that mount the claim), so exec is granted in
exactly these namespaces and nowhere else.
*/}}
{{- define "kubestow.hookNamespaces" -}}
{{- $out := list -}}
{{- range $k := list "STOW_PRECONDITION" "STOW_PRE_HOOKS" "STOW_POST_HOOKS" -}}
{{- $text := trim (toString (index $.env $k | default "")) -}}
{{- if $text -}}
{{- if or (regexMatch "^\\[\\s*[\\{\\]\"]" $text) (and (eq $k "STOW_PRECONDITION") (hasPrefix "{" $text)) -}}
{{- $entries := list -}}
{{- if hasPrefix "{" $text -}}{{- $entries = list (fromJson $text) -}}{{- else -}}{{- $entries = fromJsonArray $text -}}{{- end -}}
{{- range $entries -}}
{{- if and (kindIs "map" .) (kindIs "map" .exec) -}}
{{- $out = append $out (toString .exec.namespace) -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- range $line := splitList "\n" $text -}}
{{- $l := trim $line -}}
{{- if regexMatch "^([A-Za-z][-A-Za-z0-9_]*=\\S*\\s+)*exec:" $l -}}
{{- $out = append $out (trim (regexReplaceAll "^([A-Za-z][-A-Za-z0-9_]*=\\S*\\s+)*exec:([^/]*)/.*$" $l "${2}")) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $out -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .) -}}
{{- fail (printf "%s: exec hook namespace %q is not a namespace name (hooks name one namespace each, no globs)" $.name .) -}}
{{- end -}}
{{- end -}}
{{- toJson (uniq $out) -}}
{{- end -}}

{{/*
What the release's runs will do, for RBAC and NOTES.txt, as JSON:
  snapshots    some plan may read volumes from CSI snapshots (volumeSource auto or snapshot)
  shadowPVs    some plan may read a claim no pod mounts through a read-only
               copy of its PersistentVolume, or a mounted one through the
               kubelet's directory (auto or kubelet)
  movers       some plan backs up volume data (anything but skip)
  backupExec   namespaces the plans' exec hooks name
  restoreExec  namespaces the restore template's exec hooks name
  podSecurity  the Pod Security level the release namespace needs
*/}}
{{- define "kubestow.usage" -}}
{{- $root := . -}}
{{- $out := dict "snapshots" false "shadowPVs" false "movers" false "backupExec" list "restoreExec" list -}}
{{- $noSched := dict "minInterval" "" "timeZone" "" "once" false "lastDay" false -}}
{{- range $p := $root.Values.plans -}}
{{- $env := include "kubestow.planEnv" (dict "root" $root "plan" $p "sched" $noSched) | fromJson -}}
{{- $src := toString ($env.STOW_VOLUME_SOURCE | default "auto") -}}
{{- if ne $src "skip" -}}{{- $_ := set $out "movers" true -}}{{- end -}}
{{- if and (ne $src "skip") (ne $src "kubelet") -}}{{- $_ := set $out "snapshots" true -}}{{- end -}}
{{- if and (ne $src "skip") (ne $src "snapshot") -}}{{- $_ := set $out "shadowPVs" true -}}{{- end -}}
{{- $ns := include "kubestow.hookNamespaces" (dict "name" (printf "plan %s" $p.name) "env" $env) | fromJsonArray -}}
{{- $_ := set $out "backupExec" (concat $out.backupExec $ns | uniq) -}}
{{- end -}}
{{- if $root.Values.restore.enabled -}}
{{- $ns := include "kubestow.hookNamespaces" (dict "name" "restore.template" "env" ((($root.Values.restore.template | default dict).env) | default dict)) | fromJsonArray -}}
{{- $_ := set $out "restoreExec" $ns -}}
{{- end -}}
{{- $level := "restricted" -}}
{{- if or $out.movers $root.Values.restore.enabled -}}{{- $level = "baseline" -}}{{- end -}}
{{- if $out.shadowPVs -}}{{- $level = "privileged" -}}{{- end -}}
{{- $_ := set $out "podSecurity" $level -}}
{{- toJson $out -}}
{{- end -}}

{{/*
Read access for the backup SA everywhere, and for the restore SA outside
its namespaces. `list` and `watch` on every resource of every group,
custom resources included. `get` only on the built-in types: RBAC's "*"
also matches subresources, and a GET on pods/exec, pods/attach and
pods/portforward (WebSocket, authorized as `get` before Kubernetes 1.35),
on nodes/proxy (the kubelet's API) or on services/ and pods/proxy would run
commands or reach services. The core group is therefore listed type by
type (none of its subresources), and the other built-in groups have no
such subresource. Custom resources are listed, never fetched one by one.
*/}}
{{- define "kubestow.readRules" -}}
- apiGroups: ["*"]
  resources: ["*"]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [configmaps, endpoints, events, limitranges, namespaces, nodes, persistentvolumeclaims, persistentvolumes, pods, podtemplates, replicationcontrollers, resourcequotas, secrets, serviceaccounts, services]
  verbs: [get]
- apiGroups: [admissionregistration.k8s.io, apiextensions.k8s.io, apiregistration.k8s.io, apps, autoscaling, batch, certificates.k8s.io, coordination.k8s.io, discovery.k8s.io, events.k8s.io, extensions, flowcontrol.apiserver.k8s.io, networking.k8s.io, node.k8s.io, policy, rbac.authorization.k8s.io, resource.k8s.io, scheduling.k8s.io, snapshot.storage.k8s.io, storage.k8s.io]
  resources: ["*"]
  verbs: [get]
{{- end -}}
