
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'pv3' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'pv3'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'pv3' {
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('devices', 'devices', [CompletionResultType]::ParameterValue, 'List the P3s publishing on a broker: find your device id')
            [CompletionResult]::new('collect', 'collect', [CompletionResultType]::ParameterValue, 'Forward live P3 data from MQTT to the PV3 Monitor API')
            [CompletionResult]::new('sniff', 'sniff', [CompletionResultType]::ParameterValue, 'Capture raw MQTT traffic as JSON Lines (stdout or -o FILE)')
            [CompletionResult]::new('replay', 'replay', [CompletionResultType]::ParameterValue, 'Decode a capture and send it to the API (or print it with --dry-run)')
            [CompletionResult]::new('watch', 'watch', [CompletionResultType]::ParameterValue, 'The battery live in the terminal: power flow, charge, alarms, history')
            [CompletionResult]::new('check-api', 'check-api', [CompletionResultType]::ParameterValue, 'Check the API end to end, and the local collector''s status')
            [CompletionResult]::new('install-service', 'install-service', [CompletionResultType]::ParameterValue, 'Install `pv3 collect` as a hardened systemd service')
            [CompletionResult]::new('addon', 'addon', [CompletionResultType]::ParameterValue, 'The Home Assistant add-on''s start: collect, set up from /data/options.json and the Supervisor (docs/addon.md)')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'pv3;devices' {
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'How long to listen once subscribed, in seconds (connecting may take as long again)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output: a block per device for people, or JSON Lines for scripts')
            [CompletionResult]::new('--mqtt-host', '--mqtt-host', [CompletionResultType]::ParameterName, 'Broker host (the P3''s LAN address)')
            [CompletionResult]::new('--mqtt-port', '--mqtt-port', [CompletionResultType]::ParameterName, 'Broker port [default: 1883, or 8883 with --mqtt-tls]')
            [CompletionResult]::new('--mqtt-username', '--mqtt-username', [CompletionResultType]::ParameterName, 'User name, for a broker that asks for one')
            [CompletionResult]::new('--mqtt-password', '--mqtt-password', [CompletionResultType]::ParameterName, 'Never shown in --help or logs')
            [CompletionResult]::new('--mqtt-ca', '--mqtt-ca', [CompletionResultType]::ParameterName, 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system''s roots]')
            [CompletionResult]::new('--mqtt-client-id', '--mqtt-client-id', [CompletionResultType]::ParameterName, '[default: pv3-<command>-<random>]')
            [CompletionResult]::new('--mqtt-reconnect-max', '--mqtt-reconnect-max', [CompletionResultType]::ParameterName, 'Longest wait between reconnect attempts, in seconds')
            [CompletionResult]::new('--mqtt-tls', '--mqtt-tls', [CompletionResultType]::ParameterName, 'Connect with TLS')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pv3;collect' {
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output of --dry-run [default: table on a terminal, else jsonl]')
            [CompletionResult]::new('--spool-max-mb', '--spool-max-mb', [CompletionResultType]::ParameterName, 'Largest on-disk spool, in MiB; when full the oldest readings are dropped (and counted)')
            [CompletionResult]::new('--share-group', '--share-group', [CompletionResultType]::ParameterName, 'Subscribe through the MQTT shared subscription $share/NAME/...: the collectors of one group split the traffic between them')
            [CompletionResult]::new('--stale-after', '--stale-after', [CompletionResultType]::ParameterName, 'Reconnect when connected but silent this long, in seconds')
            [CompletionResult]::new('--batch-size', '--batch-size', [CompletionResultType]::ParameterName, 'Measurements per POST')
            [CompletionResult]::new('--linger-ms', '--linger-ms', [CompletionResultType]::ParameterName, 'Send a batch after this long even if not full, in milliseconds')
            [CompletionResult]::new('--queue-max', '--queue-max', [CompletionResultType]::ParameterName, 'Measurements held in memory while the API is unreachable or slow; past it they all go to the on-disk spool (see --spool-max-mb)')
            [CompletionResult]::new('--shutdown-grace', '--shutdown-grace', [CompletionResultType]::ParameterName, 'On SIGINT/SIGTERM, how long to keep delivering what is queued, in seconds')
            [CompletionResult]::new('--stats-interval', '--stats-interval', [CompletionResultType]::ParameterName, 'Seconds between progress lines in the log (0: never)')
            [CompletionResult]::new('--mqtt-host', '--mqtt-host', [CompletionResultType]::ParameterName, 'Broker host (the P3''s LAN address)')
            [CompletionResult]::new('--mqtt-port', '--mqtt-port', [CompletionResultType]::ParameterName, 'Broker port [default: 1883, or 8883 with --mqtt-tls]')
            [CompletionResult]::new('--mqtt-username', '--mqtt-username', [CompletionResultType]::ParameterName, 'User name, for a broker that asks for one')
            [CompletionResult]::new('--mqtt-password', '--mqtt-password', [CompletionResultType]::ParameterName, 'Never shown in --help or logs')
            [CompletionResult]::new('--mqtt-ca', '--mqtt-ca', [CompletionResultType]::ParameterName, 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system''s roots]')
            [CompletionResult]::new('--mqtt-client-id', '--mqtt-client-id', [CompletionResultType]::ParameterName, '[default: pv3-<command>-<random>]')
            [CompletionResult]::new('--mqtt-reconnect-max', '--mqtt-reconnect-max', [CompletionResultType]::ParameterName, 'Longest wait between reconnect attempts, in seconds')
            [CompletionResult]::new('--device-id', '--device-id', [CompletionResultType]::ParameterName, 'Device id, or + for every device on the broker')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'PV3 Monitor base URL')
            [CompletionResult]::new('--api-token', '--api-token', [CompletionResultType]::ParameterName, 'Sent as `Authorization: Bearer`; never shown or logged')
            [CompletionResult]::new('--api-timeout', '--api-timeout', [CompletionResultType]::ParameterName, 'Per-request timeout, in seconds')
            [CompletionResult]::new('--api-device-id', '--api-device-id', [CompletionResultType]::ParameterName, 'Post under this device id instead of the topic''s (the dashboard''s configured id); one P3 only')
            [CompletionResult]::new('--retry-max', '--retry-max', [CompletionResultType]::ParameterName, 'Longest wait between retries of a failed POST, in seconds')
            [CompletionResult]::new('--soc-threshold', '--soc-threshold', [CompletionResultType]::ParameterName, 'SOC filter threshold in percentage points (0 turns it off)')
            [CompletionResult]::new('--state-dir', '--state-dir', [CompletionResultType]::ParameterName, 'Spool and status directory [default: $STATE_DIRECTORY (systemd), else ~/.local/state/pv3]')
            [CompletionResult]::new('--publish-prefix', '--publish-prefix', [CompletionResultType]::ParameterName, 'Topic prefix of --publish')
            [CompletionResult]::new('--publish-interval', '--publish-interval', [CompletionResultType]::ParameterName, 'At most one state per value per SECS, the latest at the end; an unchanged value every 5 minutes (0: every reading)')
            [CompletionResult]::new('--ha-prefix', '--ha-prefix', [CompletionResultType]::ParameterName, 'Home Assistant''s discovery prefix')
            [CompletionResult]::new('--metrics-listen', '--metrics-listen', [CompletionResultType]::ParameterName, 'Serve Prometheus metrics on http://ADDR:PORT/metrics')
            [CompletionResult]::new('--out-mqtt-host', '--out-mqtt-host', [CompletionResultType]::ParameterName, 'Broker of --publish/--ha [default: the source broker]')
            [CompletionResult]::new('--out-mqtt-port', '--out-mqtt-port', [CompletionResultType]::ParameterName, '[default: --mqtt-port, or 1883 (8883 with TLS) for another host]')
            [CompletionResult]::new('--out-mqtt-username', '--out-mqtt-username', [CompletionResultType]::ParameterName, 'User name on the output broker')
            [CompletionResult]::new('--out-mqtt-password', '--out-mqtt-password', [CompletionResultType]::ParameterName, 'Never shown in --help or logs')
            [CompletionResult]::new('--out-mqtt-ca', '--out-mqtt-ca', [CompletionResultType]::ParameterName, 'CA certificate (PEM) of the output broker; implies --out-mqtt-tls')
            [CompletionResult]::new('--out-mqtt-client-id', '--out-mqtt-client-id', [CompletionResultType]::ParameterName, '[default: --mqtt-client-id + "-out", else pv3-publish-<random>]')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'Print what would be sent; send nothing')
            [CompletionResult]::new('--ha-remove', '--ha-remove', [CompletionResultType]::ParameterName, 'Remove every entity --ha announced for --device-id (+: every P3), with the retained topics of --publish, then exit; add it to the collect command it undoes')
            [CompletionResult]::new('--mqtt-tls', '--mqtt-tls', [CompletionResultType]::ParameterName, 'Connect with TLS')
            [CompletionResult]::new('--no-api', '--no-api', [CompletionResultType]::ParameterName, 'Do not send to the PV3 Monitor API (needs --publish, --ha or --metrics-listen)')
            [CompletionResult]::new('--publish', '--publish', [CompletionResultType]::ParameterName, 'Publish each value as a plain number on PREFIX/DEVICE/METRIC (evcc, Telegraf, Node-RED)')
            [CompletionResult]::new('--ha', '--ha', [CompletionResultType]::ParameterName, 'Home Assistant MQTT discovery (implies --publish)')
            [CompletionResult]::new('--out-mqtt-tls', '--out-mqtt-tls', [CompletionResultType]::ParameterName, 'TLS to the output broker')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pv3;sniff' {
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Append to FILE instead of writing to stdout')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Append to FILE instead of writing to stdout')
            [CompletionResult]::new('--count', '--count', [CompletionResultType]::ParameterName, 'Stop after N messages')
            [CompletionResult]::new('--duration', '--duration', [CompletionResultType]::ParameterName, 'Stop after this many seconds')
            [CompletionResult]::new('--topic', '--topic', [CompletionResultType]::ParameterName, 'Subscribe to FILTER instead of the device''s topics (repeatable; MQTT wildcards + and #)')
            [CompletionResult]::new('--mqtt-host', '--mqtt-host', [CompletionResultType]::ParameterName, 'Broker host (the P3''s LAN address)')
            [CompletionResult]::new('--mqtt-port', '--mqtt-port', [CompletionResultType]::ParameterName, 'Broker port [default: 1883, or 8883 with --mqtt-tls]')
            [CompletionResult]::new('--mqtt-username', '--mqtt-username', [CompletionResultType]::ParameterName, 'User name, for a broker that asks for one')
            [CompletionResult]::new('--mqtt-password', '--mqtt-password', [CompletionResultType]::ParameterName, 'Never shown in --help or logs')
            [CompletionResult]::new('--mqtt-ca', '--mqtt-ca', [CompletionResultType]::ParameterName, 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system''s roots]')
            [CompletionResult]::new('--mqtt-client-id', '--mqtt-client-id', [CompletionResultType]::ParameterName, '[default: pv3-<command>-<random>]')
            [CompletionResult]::new('--mqtt-reconnect-max', '--mqtt-reconnect-max', [CompletionResultType]::ParameterName, 'Longest wait between reconnect attempts, in seconds')
            [CompletionResult]::new('--device-id', '--device-id', [CompletionResultType]::ParameterName, 'Device id, or + for every device on the broker')
            [CompletionResult]::new('--mqtt-tls', '--mqtt-tls', [CompletionResultType]::ParameterName, 'Connect with TLS')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pv3;replay' {
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output of --dry-run [default: table on a terminal, else jsonl]')
            [CompletionResult]::new('--speed', '--speed', [CompletionResultType]::ParameterName, 'Pace: max, or N times the recorded pace [default: max, 1 with --to-mqtt]')
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'Only records at or after this time (RFC 3339)')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'Only records before this time (RFC 3339)')
            [CompletionResult]::new('--topic', '--topic', [CompletionResultType]::ParameterName, 'Only topics matching FILTER (repeatable; MQTT wildcards)')
            [CompletionResult]::new('--device-id', '--device-id', [CompletionResultType]::ParameterName, 'Use this device id instead of the one in each topic')
            [CompletionResult]::new('--batch-size', '--batch-size', [CompletionResultType]::ParameterName, 'Measurements per POST')
            [CompletionResult]::new('--concurrency', '--concurrency', [CompletionResultType]::ParameterName, 'POSTs in flight at once')
            [CompletionResult]::new('--give-up', '--give-up', [CompletionResultType]::ParameterName, 'Give up when the API has taken nothing for this long, in seconds')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'PV3 Monitor base URL')
            [CompletionResult]::new('--api-token', '--api-token', [CompletionResultType]::ParameterName, 'Sent as `Authorization: Bearer`; never shown or logged')
            [CompletionResult]::new('--api-timeout', '--api-timeout', [CompletionResultType]::ParameterName, 'Per-request timeout, in seconds')
            [CompletionResult]::new('--retry-max', '--retry-max', [CompletionResultType]::ParameterName, 'Longest wait between retries of a failed POST, in seconds')
            [CompletionResult]::new('--soc-threshold', '--soc-threshold', [CompletionResultType]::ParameterName, 'SOC filter threshold in percentage points (0 turns it off)')
            [CompletionResult]::new('--mqtt-host', '--mqtt-host', [CompletionResultType]::ParameterName, 'Broker host (the P3''s LAN address)')
            [CompletionResult]::new('--mqtt-port', '--mqtt-port', [CompletionResultType]::ParameterName, 'Broker port [default: 1883, or 8883 with --mqtt-tls]')
            [CompletionResult]::new('--mqtt-username', '--mqtt-username', [CompletionResultType]::ParameterName, 'User name, for a broker that asks for one')
            [CompletionResult]::new('--mqtt-password', '--mqtt-password', [CompletionResultType]::ParameterName, 'Never shown in --help or logs')
            [CompletionResult]::new('--mqtt-ca', '--mqtt-ca', [CompletionResultType]::ParameterName, 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system''s roots]')
            [CompletionResult]::new('--mqtt-client-id', '--mqtt-client-id', [CompletionResultType]::ParameterName, '[default: pv3-<command>-<random>]')
            [CompletionResult]::new('--mqtt-reconnect-max', '--mqtt-reconnect-max', [CompletionResultType]::ParameterName, 'Longest wait between reconnect attempts, in seconds')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'Print the decoded data; send nothing')
            [CompletionResult]::new('--alarms', '--alarms', [CompletionResultType]::ParameterName, 'Also send alarm states (the API stamps alarm events with its own clock, so old states would create events at the wrong time)')
            [CompletionResult]::new('--to-mqtt', '--to-mqtt', [CompletionResultType]::ParameterName, 'Republish the raw messages to an MQTT broker instead (qos and retain as recorded)')
            [CompletionResult]::new('--no-skip-existing', '--no-skip-existing', [CompletionResultType]::ParameterName, 'Send everything, even what the API already holds (by default each window of the capture is checked against the API''s history first)')
            [CompletionResult]::new('--mqtt-tls', '--mqtt-tls', [CompletionResultType]::ParameterName, 'Connect with TLS')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pv3;watch' {
            [CompletionResult]::new('--speed', '--speed', [CompletionResultType]::ParameterName, 'Pace of FILE: max, or N times the recorded pace')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'With --once: the longest wait for every topic to be seen, in seconds')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'The snapshot''s format; implies --once')
            [CompletionResult]::new('--mqtt-host', '--mqtt-host', [CompletionResultType]::ParameterName, 'Broker host (the P3''s LAN address)')
            [CompletionResult]::new('--mqtt-port', '--mqtt-port', [CompletionResultType]::ParameterName, 'Broker port [default: 1883, or 8883 with --mqtt-tls]')
            [CompletionResult]::new('--mqtt-username', '--mqtt-username', [CompletionResultType]::ParameterName, 'User name, for a broker that asks for one')
            [CompletionResult]::new('--mqtt-password', '--mqtt-password', [CompletionResultType]::ParameterName, 'Never shown in --help or logs')
            [CompletionResult]::new('--mqtt-ca', '--mqtt-ca', [CompletionResultType]::ParameterName, 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system''s roots]')
            [CompletionResult]::new('--mqtt-client-id', '--mqtt-client-id', [CompletionResultType]::ParameterName, '[default: pv3-<command>-<random>]')
            [CompletionResult]::new('--mqtt-reconnect-max', '--mqtt-reconnect-max', [CompletionResultType]::ParameterName, 'Longest wait between reconnect attempts, in seconds')
            [CompletionResult]::new('--device-id', '--device-id', [CompletionResultType]::ParameterName, 'Device id, or + for every device on the broker')
            [CompletionResult]::new('--once', '--once', [CompletionResultType]::ParameterName, 'Print one snapshot and exit, without the screen')
            [CompletionResult]::new('--mqtt-tls', '--mqtt-tls', [CompletionResultType]::ParameterName, 'Connect with TLS')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pv3;check-api' {
            [CompletionResult]::new('--device-id', '--device-id', [CompletionResultType]::ParameterName, 'The device whose data is checked')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output: a table for people, or JSON for scripts')
            [CompletionResult]::new('--max-age', '--max-age', [CompletionResultType]::ParameterName, 'Warn when the newest data is older than this, in seconds')
            [CompletionResult]::new('--state-dir', '--state-dir', [CompletionResultType]::ParameterName, 'Spool and status directory [default: $STATE_DIRECTORY (systemd), else ~/.local/state/pv3]')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'PV3 Monitor base URL')
            [CompletionResult]::new('--api-token', '--api-token', [CompletionResultType]::ParameterName, 'Sent as `Authorization: Bearer`; never shown or logged')
            [CompletionResult]::new('--api-timeout', '--api-timeout', [CompletionResultType]::ParameterName, 'Per-request timeout, in seconds')
            [CompletionResult]::new('--write', '--write', [CompletionResultType]::ParameterName, 'Also POST a probe measurement (metric pv3_check_probe) and read it back; it stays in the database and counts as fresh data')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pv3;install-service' {
            [CompletionResult]::new('--binary', '--binary', [CompletionResultType]::ParameterName, 'The pv3 binary the service runs [default: this one]')
            [CompletionResult]::new('--root', '--root', [CompletionResultType]::ParameterName, 'Tests: write every file under DIR and run no systemctl (print it)')
            [CompletionResult]::new('--mqtt-host', '--mqtt-host', [CompletionResultType]::ParameterName, 'Broker host (the P3''s LAN address)')
            [CompletionResult]::new('--mqtt-port', '--mqtt-port', [CompletionResultType]::ParameterName, 'Broker port [default: 1883, or 8883 with --mqtt-tls]')
            [CompletionResult]::new('--mqtt-username', '--mqtt-username', [CompletionResultType]::ParameterName, 'User name, for a broker that asks for one')
            [CompletionResult]::new('--mqtt-password', '--mqtt-password', [CompletionResultType]::ParameterName, 'Never shown in --help or logs')
            [CompletionResult]::new('--mqtt-ca', '--mqtt-ca', [CompletionResultType]::ParameterName, 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system''s roots]')
            [CompletionResult]::new('--mqtt-client-id', '--mqtt-client-id', [CompletionResultType]::ParameterName, '[default: pv3-<command>-<random>]')
            [CompletionResult]::new('--mqtt-reconnect-max', '--mqtt-reconnect-max', [CompletionResultType]::ParameterName, 'Longest wait between reconnect attempts, in seconds')
            [CompletionResult]::new('--device-id', '--device-id', [CompletionResultType]::ParameterName, 'Device id, or + for every device on the broker')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'PV3 Monitor base URL')
            [CompletionResult]::new('--api-token', '--api-token', [CompletionResultType]::ParameterName, 'Sent as `Authorization: Bearer`; never shown or logged')
            [CompletionResult]::new('--api-timeout', '--api-timeout', [CompletionResultType]::ParameterName, 'Per-request timeout, in seconds')
            [CompletionResult]::new('--api-device-id', '--api-device-id', [CompletionResultType]::ParameterName, 'Post under this device id instead of the topic''s (the dashboard''s configured id); one P3 only')
            [CompletionResult]::new('--publish-prefix', '--publish-prefix', [CompletionResultType]::ParameterName, 'Topic prefix of --publish')
            [CompletionResult]::new('--publish-interval', '--publish-interval', [CompletionResultType]::ParameterName, 'At most one state per value per SECS, the latest at the end; an unchanged value every 5 minutes (0: every reading)')
            [CompletionResult]::new('--ha-prefix', '--ha-prefix', [CompletionResultType]::ParameterName, 'Home Assistant''s discovery prefix')
            [CompletionResult]::new('--metrics-listen', '--metrics-listen', [CompletionResultType]::ParameterName, 'Serve Prometheus metrics on http://ADDR:PORT/metrics')
            [CompletionResult]::new('--out-mqtt-host', '--out-mqtt-host', [CompletionResultType]::ParameterName, 'Broker of --publish/--ha [default: the source broker]')
            [CompletionResult]::new('--out-mqtt-port', '--out-mqtt-port', [CompletionResultType]::ParameterName, '[default: --mqtt-port, or 1883 (8883 with TLS) for another host]')
            [CompletionResult]::new('--out-mqtt-username', '--out-mqtt-username', [CompletionResultType]::ParameterName, 'User name on the output broker')
            [CompletionResult]::new('--out-mqtt-password', '--out-mqtt-password', [CompletionResultType]::ParameterName, 'Never shown in --help or logs')
            [CompletionResult]::new('--out-mqtt-ca', '--out-mqtt-ca', [CompletionResultType]::ParameterName, 'CA certificate (PEM) of the output broker; implies --out-mqtt-tls')
            [CompletionResult]::new('--out-mqtt-client-id', '--out-mqtt-client-id', [CompletionResultType]::ParameterName, '[default: --mqtt-client-id + "-out", else pv3-publish-<random>]')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'Print each file it would write and each command it would run; change nothing (secrets shown as ***)')
            [CompletionResult]::new('--uninstall', '--uninstall', [CompletionResultType]::ParameterName, 'Stop, disable and remove the service and its env file (state kept)')
            [CompletionResult]::new('--purge', '--purge', [CompletionResultType]::ParameterName, 'With --uninstall: also delete the state directory (spool, status)')
            [CompletionResult]::new('--user', '--user', [CompletionResultType]::ParameterName, 'A user service (~/.config/systemd/user, systemctl --user): no root')
            [CompletionResult]::new('--pretend-non-root', '--pretend-non-root', [CompletionResultType]::ParameterName, 'Tests: behave as if not run as root')
            [CompletionResult]::new('--mqtt-tls', '--mqtt-tls', [CompletionResultType]::ParameterName, 'Connect with TLS')
            [CompletionResult]::new('--no-api', '--no-api', [CompletionResultType]::ParameterName, 'Do not send to the PV3 Monitor API (needs --publish, --ha or --metrics-listen)')
            [CompletionResult]::new('--publish', '--publish', [CompletionResultType]::ParameterName, 'Publish each value as a plain number on PREFIX/DEVICE/METRIC (evcc, Telegraf, Node-RED)')
            [CompletionResult]::new('--ha', '--ha', [CompletionResultType]::ParameterName, 'Home Assistant MQTT discovery (implies --publish)')
            [CompletionResult]::new('--out-mqtt-tls', '--out-mqtt-tls', [CompletionResultType]::ParameterName, 'TLS to the output broker')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pv3;addon' {
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pv3;completions' {
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log detail (-v debug, -vv trace)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Less log detail (-q warnings only, -qq errors only)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'pv3;help' {
            [CompletionResult]::new('devices', 'devices', [CompletionResultType]::ParameterValue, 'List the P3s publishing on a broker: find your device id')
            [CompletionResult]::new('collect', 'collect', [CompletionResultType]::ParameterValue, 'Forward live P3 data from MQTT to the PV3 Monitor API')
            [CompletionResult]::new('sniff', 'sniff', [CompletionResultType]::ParameterValue, 'Capture raw MQTT traffic as JSON Lines (stdout or -o FILE)')
            [CompletionResult]::new('replay', 'replay', [CompletionResultType]::ParameterValue, 'Decode a capture and send it to the API (or print it with --dry-run)')
            [CompletionResult]::new('watch', 'watch', [CompletionResultType]::ParameterValue, 'The battery live in the terminal: power flow, charge, alarms, history')
            [CompletionResult]::new('check-api', 'check-api', [CompletionResultType]::ParameterValue, 'Check the API end to end, and the local collector''s status')
            [CompletionResult]::new('install-service', 'install-service', [CompletionResultType]::ParameterValue, 'Install `pv3 collect` as a hardened systemd service')
            [CompletionResult]::new('addon', 'addon', [CompletionResultType]::ParameterValue, 'The Home Assistant add-on''s start: collect, set up from /data/options.json and the Supervisor (docs/addon.md)')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'pv3;help;devices' {
            break
        }
        'pv3;help;collect' {
            break
        }
        'pv3;help;sniff' {
            break
        }
        'pv3;help;replay' {
            break
        }
        'pv3;help;watch' {
            break
        }
        'pv3;help;check-api' {
            break
        }
        'pv3;help;install-service' {
            break
        }
        'pv3;help;addon' {
            break
        }
        'pv3;help;completions' {
            break
        }
        'pv3;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
