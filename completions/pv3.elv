
use builtin;
use str;

set edit:completion:arg-completer[pv3] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'pv3'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'pv3'= {
            cand -v 'More log detail (-v debug, -vv trace)'
            cand --verbose 'More log detail (-v debug, -vv trace)'
            cand -q 'Less log detail (-q warnings only, -qq errors only)'
            cand --quiet 'Less log detail (-q warnings only, -qq errors only)'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
            cand devices 'List the P3s publishing on a broker: find your device id'
            cand collect 'Forward live P3 data from MQTT to the PV3 Monitor API'
            cand sniff 'Capture raw MQTT traffic as JSON Lines (stdout or -o FILE)'
            cand replay 'Decode a capture and send it to the API (or print it with --dry-run)'
            cand watch 'The battery live in the terminal: power flow, charge, alarms, history'
            cand check-api 'Check the API end to end, and the local collector''s status'
            cand install-service 'Install `pv3 collect` as a hardened systemd service'
            cand addon 'The Home Assistant add-on''s start: collect, set up from /data/options.json and the Supervisor (docs/addon.md)'
            cand completions 'Print a shell completion script'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'pv3;devices'= {
            cand --wait 'How long to listen once subscribed, in seconds (connecting may take as long again)'
            cand --format 'Output: a block per device for people, or JSON Lines for scripts'
            cand --mqtt-host 'Broker host (the P3''s LAN address)'
            cand --mqtt-port 'Broker port [default: 1883, or 8883 with --mqtt-tls]'
            cand --mqtt-username 'User name, for a broker that asks for one'
            cand --mqtt-password 'Never shown in --help or logs'
            cand --mqtt-ca 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system''s roots]'
            cand --mqtt-client-id '[default: pv3-<command>-<random>]'
            cand --mqtt-reconnect-max 'Longest wait between reconnect attempts, in seconds'
            cand --mqtt-tls 'Connect with TLS'
            cand -v 'More log detail (-v debug, -vv trace)'
            cand --verbose 'More log detail (-v debug, -vv trace)'
            cand -q 'Less log detail (-q warnings only, -qq errors only)'
            cand --quiet 'Less log detail (-q warnings only, -qq errors only)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pv3;collect'= {
            cand --format 'Output of --dry-run [default: table on a terminal, else jsonl]'
            cand --spool-max-mb 'Largest on-disk spool, in MiB; when full the oldest readings are dropped (and counted)'
            cand --share-group 'Subscribe through the MQTT shared subscription $share/NAME/...: the collectors of one group split the traffic between them'
            cand --stale-after 'Reconnect when connected but silent this long, in seconds'
            cand --batch-size 'Measurements per POST'
            cand --linger-ms 'Send a batch after this long even if not full, in milliseconds'
            cand --queue-max 'Measurements held in memory while the API is unreachable or slow; past it they all go to the on-disk spool (see --spool-max-mb)'
            cand --shutdown-grace 'On SIGINT/SIGTERM, how long to keep delivering what is queued, in seconds'
            cand --stats-interval 'Seconds between progress lines in the log (0: never)'
            cand --mqtt-host 'Broker host (the P3''s LAN address)'
            cand --mqtt-port 'Broker port [default: 1883, or 8883 with --mqtt-tls]'
            cand --mqtt-username 'User name, for a broker that asks for one'
            cand --mqtt-password 'Never shown in --help or logs'
            cand --mqtt-ca 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system''s roots]'
            cand --mqtt-client-id '[default: pv3-<command>-<random>]'
            cand --mqtt-reconnect-max 'Longest wait between reconnect attempts, in seconds'
            cand --device-id 'Device id, or + for every device on the broker'
            cand --api-url 'PV3 Monitor base URL'
            cand --api-token 'Sent as `Authorization: Bearer`; never shown or logged'
            cand --api-timeout 'Per-request timeout, in seconds'
            cand --api-device-id 'Post under this device id instead of the topic''s (the dashboard''s configured id); one P3 only'
            cand --retry-max 'Longest wait between retries of a failed POST, in seconds'
            cand --soc-threshold 'SOC filter threshold in percentage points (0 turns it off)'
            cand --state-dir 'Spool and status directory [default: $STATE_DIRECTORY (systemd), else ~/.local/state/pv3]'
            cand --publish-prefix 'Topic prefix of --publish'
            cand --publish-interval 'At most one state per value per SECS, the latest at the end; an unchanged value every 5 minutes (0: every reading)'
            cand --ha-prefix 'Home Assistant''s discovery prefix'
            cand --metrics-listen 'Serve Prometheus metrics on http://ADDR:PORT/metrics'
            cand --out-mqtt-host 'Broker of --publish/--ha [default: the source broker]'
            cand --out-mqtt-port '[default: --mqtt-port, or 1883 (8883 with TLS) for another host]'
            cand --out-mqtt-username 'User name on the output broker'
            cand --out-mqtt-password 'Never shown in --help or logs'
            cand --out-mqtt-ca 'CA certificate (PEM) of the output broker; implies --out-mqtt-tls'
            cand --out-mqtt-client-id '[default: --mqtt-client-id + "-out", else pv3-publish-<random>]'
            cand --dry-run 'Print what would be sent; send nothing'
            cand --ha-remove 'Remove every entity --ha announced for --device-id (+: every P3), with the retained topics of --publish, then exit; add it to the collect command it undoes'
            cand --mqtt-tls 'Connect with TLS'
            cand --no-api 'Do not send to the PV3 Monitor API (needs --publish, --ha or --metrics-listen)'
            cand --publish 'Publish each value as a plain number on PREFIX/DEVICE/METRIC (evcc, Telegraf, Node-RED)'
            cand --ha 'Home Assistant MQTT discovery (implies --publish)'
            cand --out-mqtt-tls 'TLS to the output broker'
            cand -v 'More log detail (-v debug, -vv trace)'
            cand --verbose 'More log detail (-v debug, -vv trace)'
            cand -q 'Less log detail (-q warnings only, -qq errors only)'
            cand --quiet 'Less log detail (-q warnings only, -qq errors only)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pv3;sniff'= {
            cand -o 'Append to FILE instead of writing to stdout'
            cand --output 'Append to FILE instead of writing to stdout'
            cand --count 'Stop after N messages'
            cand --duration 'Stop after this many seconds'
            cand --topic 'Subscribe to FILTER instead of the device''s topics (repeatable; MQTT wildcards + and #)'
            cand --mqtt-host 'Broker host (the P3''s LAN address)'
            cand --mqtt-port 'Broker port [default: 1883, or 8883 with --mqtt-tls]'
            cand --mqtt-username 'User name, for a broker that asks for one'
            cand --mqtt-password 'Never shown in --help or logs'
            cand --mqtt-ca 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system''s roots]'
            cand --mqtt-client-id '[default: pv3-<command>-<random>]'
            cand --mqtt-reconnect-max 'Longest wait between reconnect attempts, in seconds'
            cand --device-id 'Device id, or + for every device on the broker'
            cand --mqtt-tls 'Connect with TLS'
            cand -v 'More log detail (-v debug, -vv trace)'
            cand --verbose 'More log detail (-v debug, -vv trace)'
            cand -q 'Less log detail (-q warnings only, -qq errors only)'
            cand --quiet 'Less log detail (-q warnings only, -qq errors only)'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pv3;replay'= {
            cand --format 'Output of --dry-run [default: table on a terminal, else jsonl]'
            cand --speed 'Pace: max, or N times the recorded pace [default: max, 1 with --to-mqtt]'
            cand --since 'Only records at or after this time (RFC 3339)'
            cand --until 'Only records before this time (RFC 3339)'
            cand --topic 'Only topics matching FILTER (repeatable; MQTT wildcards)'
            cand --device-id 'Use this device id instead of the one in each topic'
            cand --batch-size 'Measurements per POST'
            cand --concurrency 'POSTs in flight at once'
            cand --give-up 'Give up when the API has taken nothing for this long, in seconds'
            cand --api-url 'PV3 Monitor base URL'
            cand --api-token 'Sent as `Authorization: Bearer`; never shown or logged'
            cand --api-timeout 'Per-request timeout, in seconds'
            cand --retry-max 'Longest wait between retries of a failed POST, in seconds'
            cand --soc-threshold 'SOC filter threshold in percentage points (0 turns it off)'
            cand --mqtt-host 'Broker host (the P3''s LAN address)'
            cand --mqtt-port 'Broker port [default: 1883, or 8883 with --mqtt-tls]'
            cand --mqtt-username 'User name, for a broker that asks for one'
            cand --mqtt-password 'Never shown in --help or logs'
            cand --mqtt-ca 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system''s roots]'
            cand --mqtt-client-id '[default: pv3-<command>-<random>]'
            cand --mqtt-reconnect-max 'Longest wait between reconnect attempts, in seconds'
            cand --dry-run 'Print the decoded data; send nothing'
            cand --alarms 'Also send alarm states (the API stamps alarm events with its own clock, so old states would create events at the wrong time)'
            cand --to-mqtt 'Republish the raw messages to an MQTT broker instead (qos and retain as recorded)'
            cand --no-skip-existing 'Send everything, even what the API already holds (by default each window of the capture is checked against the API''s history first)'
            cand --mqtt-tls 'Connect with TLS'
            cand -v 'More log detail (-v debug, -vv trace)'
            cand --verbose 'More log detail (-v debug, -vv trace)'
            cand -q 'Less log detail (-q warnings only, -qq errors only)'
            cand --quiet 'Less log detail (-q warnings only, -qq errors only)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pv3;watch'= {
            cand --speed 'Pace of FILE: max, or N times the recorded pace'
            cand --wait 'With --once: the longest wait for every topic to be seen, in seconds'
            cand --format 'The snapshot''s format; implies --once'
            cand --mqtt-host 'Broker host (the P3''s LAN address)'
            cand --mqtt-port 'Broker port [default: 1883, or 8883 with --mqtt-tls]'
            cand --mqtt-username 'User name, for a broker that asks for one'
            cand --mqtt-password 'Never shown in --help or logs'
            cand --mqtt-ca 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system''s roots]'
            cand --mqtt-client-id '[default: pv3-<command>-<random>]'
            cand --mqtt-reconnect-max 'Longest wait between reconnect attempts, in seconds'
            cand --device-id 'Device id, or + for every device on the broker'
            cand --once 'Print one snapshot and exit, without the screen'
            cand --mqtt-tls 'Connect with TLS'
            cand -v 'More log detail (-v debug, -vv trace)'
            cand --verbose 'More log detail (-v debug, -vv trace)'
            cand -q 'Less log detail (-q warnings only, -qq errors only)'
            cand --quiet 'Less log detail (-q warnings only, -qq errors only)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pv3;check-api'= {
            cand --device-id 'The device whose data is checked'
            cand --format 'Output: a table for people, or JSON for scripts'
            cand --max-age 'Warn when the newest data is older than this, in seconds'
            cand --state-dir 'Spool and status directory [default: $STATE_DIRECTORY (systemd), else ~/.local/state/pv3]'
            cand --api-url 'PV3 Monitor base URL'
            cand --api-token 'Sent as `Authorization: Bearer`; never shown or logged'
            cand --api-timeout 'Per-request timeout, in seconds'
            cand --write 'Also POST a probe measurement (metric pv3_check_probe) and read it back; it stays in the database and counts as fresh data'
            cand -v 'More log detail (-v debug, -vv trace)'
            cand --verbose 'More log detail (-v debug, -vv trace)'
            cand -q 'Less log detail (-q warnings only, -qq errors only)'
            cand --quiet 'Less log detail (-q warnings only, -qq errors only)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pv3;install-service'= {
            cand --binary 'The pv3 binary the service runs [default: this one]'
            cand --root 'Tests: write every file under DIR and run no systemctl (print it)'
            cand --mqtt-host 'Broker host (the P3''s LAN address)'
            cand --mqtt-port 'Broker port [default: 1883, or 8883 with --mqtt-tls]'
            cand --mqtt-username 'User name, for a broker that asks for one'
            cand --mqtt-password 'Never shown in --help or logs'
            cand --mqtt-ca 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system''s roots]'
            cand --mqtt-client-id '[default: pv3-<command>-<random>]'
            cand --mqtt-reconnect-max 'Longest wait between reconnect attempts, in seconds'
            cand --device-id 'Device id, or + for every device on the broker'
            cand --api-url 'PV3 Monitor base URL'
            cand --api-token 'Sent as `Authorization: Bearer`; never shown or logged'
            cand --api-timeout 'Per-request timeout, in seconds'
            cand --api-device-id 'Post under this device id instead of the topic''s (the dashboard''s configured id); one P3 only'
            cand --publish-prefix 'Topic prefix of --publish'
            cand --publish-interval 'At most one state per value per SECS, the latest at the end; an unchanged value every 5 minutes (0: every reading)'
            cand --ha-prefix 'Home Assistant''s discovery prefix'
            cand --metrics-listen 'Serve Prometheus metrics on http://ADDR:PORT/metrics'
            cand --out-mqtt-host 'Broker of --publish/--ha [default: the source broker]'
            cand --out-mqtt-port '[default: --mqtt-port, or 1883 (8883 with TLS) for another host]'
            cand --out-mqtt-username 'User name on the output broker'
            cand --out-mqtt-password 'Never shown in --help or logs'
            cand --out-mqtt-ca 'CA certificate (PEM) of the output broker; implies --out-mqtt-tls'
            cand --out-mqtt-client-id '[default: --mqtt-client-id + "-out", else pv3-publish-<random>]'
            cand --dry-run 'Print each file it would write and each command it would run; change nothing (secrets shown as ***)'
            cand --uninstall 'Stop, disable and remove the service and its env file (state kept)'
            cand --purge 'With --uninstall: also delete the state directory (spool, status)'
            cand --user 'A user service (~/.config/systemd/user, systemctl --user): no root'
            cand --pretend-non-root 'Tests: behave as if not run as root'
            cand --mqtt-tls 'Connect with TLS'
            cand --no-api 'Do not send to the PV3 Monitor API (needs --publish, --ha or --metrics-listen)'
            cand --publish 'Publish each value as a plain number on PREFIX/DEVICE/METRIC (evcc, Telegraf, Node-RED)'
            cand --ha 'Home Assistant MQTT discovery (implies --publish)'
            cand --out-mqtt-tls 'TLS to the output broker'
            cand -v 'More log detail (-v debug, -vv trace)'
            cand --verbose 'More log detail (-v debug, -vv trace)'
            cand -q 'Less log detail (-q warnings only, -qq errors only)'
            cand --quiet 'Less log detail (-q warnings only, -qq errors only)'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pv3;addon'= {
            cand -v 'More log detail (-v debug, -vv trace)'
            cand --verbose 'More log detail (-v debug, -vv trace)'
            cand -q 'Less log detail (-q warnings only, -qq errors only)'
            cand --quiet 'Less log detail (-q warnings only, -qq errors only)'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pv3;completions'= {
            cand -v 'More log detail (-v debug, -vv trace)'
            cand --verbose 'More log detail (-v debug, -vv trace)'
            cand -q 'Less log detail (-q warnings only, -qq errors only)'
            cand --quiet 'Less log detail (-q warnings only, -qq errors only)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'pv3;help'= {
            cand devices 'List the P3s publishing on a broker: find your device id'
            cand collect 'Forward live P3 data from MQTT to the PV3 Monitor API'
            cand sniff 'Capture raw MQTT traffic as JSON Lines (stdout or -o FILE)'
            cand replay 'Decode a capture and send it to the API (or print it with --dry-run)'
            cand watch 'The battery live in the terminal: power flow, charge, alarms, history'
            cand check-api 'Check the API end to end, and the local collector''s status'
            cand install-service 'Install `pv3 collect` as a hardened systemd service'
            cand addon 'The Home Assistant add-on''s start: collect, set up from /data/options.json and the Supervisor (docs/addon.md)'
            cand completions 'Print a shell completion script'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'pv3;help;devices'= {
        }
        &'pv3;help;collect'= {
        }
        &'pv3;help;sniff'= {
        }
        &'pv3;help;replay'= {
        }
        &'pv3;help;watch'= {
        }
        &'pv3;help;check-api'= {
        }
        &'pv3;help;install-service'= {
        }
        &'pv3;help;addon'= {
        }
        &'pv3;help;completions'= {
        }
        &'pv3;help;help'= {
        }
    ]
    $completions[$command]
}
