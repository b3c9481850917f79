# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_pv3_global_optspecs
    string join \n v/verbose q/quiet h/help V/version
end

function __fish_pv3_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_pv3_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_pv3_using_subcommand
    set -l cmd (__fish_pv3_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c pv3 -n "__fish_pv3_needs_command" -s v -l verbose -d 'More log detail (-v debug, -vv trace)'
complete -c pv3 -n "__fish_pv3_needs_command" -s q -l quiet -d 'Less log detail (-q warnings only, -qq errors only)'
complete -c pv3 -n "__fish_pv3_needs_command" -s h -l help -d 'Print help'
complete -c pv3 -n "__fish_pv3_needs_command" -s V -l version -d 'Print version'
complete -c pv3 -n "__fish_pv3_needs_command" -f -a "devices" -d 'List the P3s publishing on a broker: find your device id'
complete -c pv3 -n "__fish_pv3_needs_command" -f -a "collect" -d 'Forward live P3 data from MQTT to the PV3 Monitor API'
complete -c pv3 -n "__fish_pv3_needs_command" -f -a "sniff" -d 'Capture raw MQTT traffic as JSON Lines (stdout or -o FILE)'
complete -c pv3 -n "__fish_pv3_needs_command" -f -a "replay" -d 'Decode a capture and send it to the API (or print it with --dry-run)'
complete -c pv3 -n "__fish_pv3_needs_command" -f -a "watch" -d 'The battery live in the terminal: power flow, charge, alarms, history'
complete -c pv3 -n "__fish_pv3_needs_command" -f -a "check-api" -d 'Check the API end to end, and the local collector\'s status'
complete -c pv3 -n "__fish_pv3_needs_command" -f -a "install-service" -d 'Install `pv3 collect` as a hardened systemd service'
complete -c pv3 -n "__fish_pv3_needs_command" -f -a "addon" -d 'The Home Assistant add-on\'s start: collect, set up from /data/options.json and the Supervisor (docs/addon.md)'
complete -c pv3 -n "__fish_pv3_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c pv3 -n "__fish_pv3_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pv3 -n "__fish_pv3_using_subcommand devices" -l wait -d 'How long to listen once subscribed, in seconds (connecting may take as long again)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand devices" -l format -d 'Output: a block per device for people, or JSON Lines for scripts' -r -f -a "table\t'A block per device, for people'
json\t'One JSON object per device, one per line'"
complete -c pv3 -n "__fish_pv3_using_subcommand devices" -l mqtt-host -d 'Broker host (the P3\'s LAN address)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand devices" -l mqtt-port -d 'Broker port [default: 1883, or 8883 with --mqtt-tls]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand devices" -l mqtt-username -d 'User name, for a broker that asks for one' -r
complete -c pv3 -n "__fish_pv3_using_subcommand devices" -l mqtt-password -d 'Never shown in --help or logs' -r
complete -c pv3 -n "__fish_pv3_using_subcommand devices" -l mqtt-ca -d 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system\'s roots]' -r -F
complete -c pv3 -n "__fish_pv3_using_subcommand devices" -l mqtt-client-id -d '[default: pv3-<command>-<random>]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand devices" -l mqtt-reconnect-max -d 'Longest wait between reconnect attempts, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand devices" -l mqtt-tls -d 'Connect with TLS'
complete -c pv3 -n "__fish_pv3_using_subcommand devices" -s v -l verbose -d 'More log detail (-v debug, -vv trace)'
complete -c pv3 -n "__fish_pv3_using_subcommand devices" -s q -l quiet -d 'Less log detail (-q warnings only, -qq errors only)'
complete -c pv3 -n "__fish_pv3_using_subcommand devices" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pv3 -n "__fish_pv3_using_subcommand devices" -s V -l version -d 'Print version'
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l format -d 'Output of --dry-run [default: table on a terminal, else jsonl]' -r -f -a "jsonl\t'One JSON object per line'
table\t'A table for people'"
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l spool-max-mb -d 'Largest on-disk spool, in MiB; when full the oldest readings are dropped (and counted)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l share-group -d 'Subscribe through the MQTT shared subscription $share/NAME/...: the collectors of one group split the traffic between them' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l stale-after -d 'Reconnect when connected but silent this long, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l batch-size -d 'Measurements per POST' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l linger-ms -d 'Send a batch after this long even if not full, in milliseconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l queue-max -d 'Measurements held in memory while the API is unreachable or slow; past it they all go to the on-disk spool (see --spool-max-mb)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l shutdown-grace -d 'On SIGINT/SIGTERM, how long to keep delivering what is queued, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l stats-interval -d 'Seconds between progress lines in the log (0: never)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l mqtt-host -d 'Broker host (the P3\'s LAN address)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l mqtt-port -d 'Broker port [default: 1883, or 8883 with --mqtt-tls]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l mqtt-username -d 'User name, for a broker that asks for one' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l mqtt-password -d 'Never shown in --help or logs' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l mqtt-ca -d 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system\'s roots]' -r -F
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l mqtt-client-id -d '[default: pv3-<command>-<random>]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l mqtt-reconnect-max -d 'Longest wait between reconnect attempts, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l device-id -d 'Device id, or + for every device on the broker' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l api-url -d 'PV3 Monitor base URL' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l api-token -d 'Sent as `Authorization: Bearer`; never shown or logged' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l api-timeout -d 'Per-request timeout, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l api-device-id -d 'Post under this device id instead of the topic\'s (the dashboard\'s configured id); one P3 only' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l retry-max -d 'Longest wait between retries of a failed POST, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l soc-threshold -d 'SOC filter threshold in percentage points (0 turns it off)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l state-dir -d 'Spool and status directory [default: $STATE_DIRECTORY (systemd), else ~/.local/state/pv3]' -r -F
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l publish-prefix -d 'Topic prefix of --publish' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l publish-interval -d 'At most one state per value per SECS, the latest at the end; an unchanged value every 5 minutes (0: every reading)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l ha-prefix -d 'Home Assistant\'s discovery prefix' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l metrics-listen -d 'Serve Prometheus metrics on http://ADDR:PORT/metrics' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l out-mqtt-host -d 'Broker of --publish/--ha [default: the source broker]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l out-mqtt-port -d '[default: --mqtt-port, or 1883 (8883 with TLS) for another host]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l out-mqtt-username -d 'User name on the output broker' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l out-mqtt-password -d 'Never shown in --help or logs' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l out-mqtt-ca -d 'CA certificate (PEM) of the output broker; implies --out-mqtt-tls' -r -F
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l out-mqtt-client-id -d '[default: --mqtt-client-id + "-out", else pv3-publish-<random>]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l dry-run -d 'Print what would be sent; send nothing'
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l ha-remove -d 'Remove every entity --ha announced for --device-id (+: every P3), with the retained topics of --publish, then exit; add it to the collect command it undoes'
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l mqtt-tls -d 'Connect with TLS'
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l no-api -d 'Do not send to the PV3 Monitor API (needs --publish, --ha or --metrics-listen)'
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l publish -d 'Publish each value as a plain number on PREFIX/DEVICE/METRIC (evcc, Telegraf, Node-RED)'
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l ha -d 'Home Assistant MQTT discovery (implies --publish)'
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -l out-mqtt-tls -d 'TLS to the output broker'
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -s v -l verbose -d 'More log detail (-v debug, -vv trace)'
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -s q -l quiet -d 'Less log detail (-q warnings only, -qq errors only)'
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pv3 -n "__fish_pv3_using_subcommand collect" -s V -l version -d 'Print version'
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -s o -l output -d 'Append to FILE instead of writing to stdout' -r -F
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -l count -d 'Stop after N messages' -r
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -l duration -d 'Stop after this many seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -l topic -d 'Subscribe to FILTER instead of the device\'s topics (repeatable; MQTT wildcards + and #)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -l mqtt-host -d 'Broker host (the P3\'s LAN address)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -l mqtt-port -d 'Broker port [default: 1883, or 8883 with --mqtt-tls]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -l mqtt-username -d 'User name, for a broker that asks for one' -r
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -l mqtt-password -d 'Never shown in --help or logs' -r
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -l mqtt-ca -d 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system\'s roots]' -r -F
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -l mqtt-client-id -d '[default: pv3-<command>-<random>]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -l mqtt-reconnect-max -d 'Longest wait between reconnect attempts, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -l device-id -d 'Device id, or + for every device on the broker' -r
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -l mqtt-tls -d 'Connect with TLS'
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -s v -l verbose -d 'More log detail (-v debug, -vv trace)'
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -s q -l quiet -d 'Less log detail (-q warnings only, -qq errors only)'
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -s h -l help -d 'Print help'
complete -c pv3 -n "__fish_pv3_using_subcommand sniff" -s V -l version -d 'Print version'
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l format -d 'Output of --dry-run [default: table on a terminal, else jsonl]' -r -f -a "jsonl\t'One JSON object per line'
table\t'A table for people'"
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l speed -d 'Pace: max, or N times the recorded pace [default: max, 1 with --to-mqtt]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l since -d 'Only records at or after this time (RFC 3339)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l until -d 'Only records before this time (RFC 3339)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l topic -d 'Only topics matching FILTER (repeatable; MQTT wildcards)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l device-id -d 'Use this device id instead of the one in each topic' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l batch-size -d 'Measurements per POST' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l concurrency -d 'POSTs in flight at once' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l give-up -d 'Give up when the API has taken nothing for this long, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l api-url -d 'PV3 Monitor base URL' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l api-token -d 'Sent as `Authorization: Bearer`; never shown or logged' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l api-timeout -d 'Per-request timeout, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l retry-max -d 'Longest wait between retries of a failed POST, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l soc-threshold -d 'SOC filter threshold in percentage points (0 turns it off)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l mqtt-host -d 'Broker host (the P3\'s LAN address)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l mqtt-port -d 'Broker port [default: 1883, or 8883 with --mqtt-tls]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l mqtt-username -d 'User name, for a broker that asks for one' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l mqtt-password -d 'Never shown in --help or logs' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l mqtt-ca -d 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system\'s roots]' -r -F
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l mqtt-client-id -d '[default: pv3-<command>-<random>]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l mqtt-reconnect-max -d 'Longest wait between reconnect attempts, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l dry-run -d 'Print the decoded data; send nothing'
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l alarms -d 'Also send alarm states (the API stamps alarm events with its own clock, so old states would create events at the wrong time)'
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l to-mqtt -d 'Republish the raw messages to an MQTT broker instead (qos and retain as recorded)'
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l no-skip-existing -d 'Send everything, even what the API already holds (by default each window of the capture is checked against the API\'s history first)'
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -l mqtt-tls -d 'Connect with TLS'
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -s v -l verbose -d 'More log detail (-v debug, -vv trace)'
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -s q -l quiet -d 'Less log detail (-q warnings only, -qq errors only)'
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pv3 -n "__fish_pv3_using_subcommand replay" -s V -l version -d 'Print version'
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -l speed -d 'Pace of FILE: max, or N times the recorded pace' -r
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -l wait -d 'With --once: the longest wait for every topic to be seen, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -l format -d 'The snapshot\'s format; implies --once' -r -f -a "table\t'A table per device, for people'
json\t'One JSON object per device, one per line'"
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -l mqtt-host -d 'Broker host (the P3\'s LAN address)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -l mqtt-port -d 'Broker port [default: 1883, or 8883 with --mqtt-tls]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -l mqtt-username -d 'User name, for a broker that asks for one' -r
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -l mqtt-password -d 'Never shown in --help or logs' -r
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -l mqtt-ca -d 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system\'s roots]' -r -F
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -l mqtt-client-id -d '[default: pv3-<command>-<random>]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -l mqtt-reconnect-max -d 'Longest wait between reconnect attempts, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -l device-id -d 'Device id, or + for every device on the broker' -r
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -l once -d 'Print one snapshot and exit, without the screen'
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -l mqtt-tls -d 'Connect with TLS'
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -s v -l verbose -d 'More log detail (-v debug, -vv trace)'
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -s q -l quiet -d 'Less log detail (-q warnings only, -qq errors only)'
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pv3 -n "__fish_pv3_using_subcommand watch" -s V -l version -d 'Print version'
complete -c pv3 -n "__fish_pv3_using_subcommand check-api" -l device-id -d 'The device whose data is checked' -r
complete -c pv3 -n "__fish_pv3_using_subcommand check-api" -l format -d 'Output: a table for people, or JSON for scripts' -r -f -a "table\t'A table for people'
json\t'One JSON object: {"ok": bool, "checks": [...]}'"
complete -c pv3 -n "__fish_pv3_using_subcommand check-api" -l max-age -d 'Warn when the newest data is older than this, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand check-api" -l state-dir -d 'Spool and status directory [default: $STATE_DIRECTORY (systemd), else ~/.local/state/pv3]' -r -F
complete -c pv3 -n "__fish_pv3_using_subcommand check-api" -l api-url -d 'PV3 Monitor base URL' -r
complete -c pv3 -n "__fish_pv3_using_subcommand check-api" -l api-token -d 'Sent as `Authorization: Bearer`; never shown or logged' -r
complete -c pv3 -n "__fish_pv3_using_subcommand check-api" -l api-timeout -d 'Per-request timeout, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand check-api" -l write -d 'Also POST a probe measurement (metric pv3_check_probe) and read it back; it stays in the database and counts as fresh data'
complete -c pv3 -n "__fish_pv3_using_subcommand check-api" -s v -l verbose -d 'More log detail (-v debug, -vv trace)'
complete -c pv3 -n "__fish_pv3_using_subcommand check-api" -s q -l quiet -d 'Less log detail (-q warnings only, -qq errors only)'
complete -c pv3 -n "__fish_pv3_using_subcommand check-api" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pv3 -n "__fish_pv3_using_subcommand check-api" -s V -l version -d 'Print version'
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l binary -d 'The pv3 binary the service runs [default: this one]' -r -F
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l root -d 'Tests: write every file under DIR and run no systemctl (print it)' -r -F
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l mqtt-host -d 'Broker host (the P3\'s LAN address)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l mqtt-port -d 'Broker port [default: 1883, or 8883 with --mqtt-tls]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l mqtt-username -d 'User name, for a broker that asks for one' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l mqtt-password -d 'Never shown in --help or logs' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l mqtt-ca -d 'CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system\'s roots]' -r -F
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l mqtt-client-id -d '[default: pv3-<command>-<random>]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l mqtt-reconnect-max -d 'Longest wait between reconnect attempts, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l device-id -d 'Device id, or + for every device on the broker' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l api-url -d 'PV3 Monitor base URL' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l api-token -d 'Sent as `Authorization: Bearer`; never shown or logged' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l api-timeout -d 'Per-request timeout, in seconds' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l api-device-id -d 'Post under this device id instead of the topic\'s (the dashboard\'s configured id); one P3 only' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l publish-prefix -d 'Topic prefix of --publish' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l publish-interval -d 'At most one state per value per SECS, the latest at the end; an unchanged value every 5 minutes (0: every reading)' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l ha-prefix -d 'Home Assistant\'s discovery prefix' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l metrics-listen -d 'Serve Prometheus metrics on http://ADDR:PORT/metrics' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l out-mqtt-host -d 'Broker of --publish/--ha [default: the source broker]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l out-mqtt-port -d '[default: --mqtt-port, or 1883 (8883 with TLS) for another host]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l out-mqtt-username -d 'User name on the output broker' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l out-mqtt-password -d 'Never shown in --help or logs' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l out-mqtt-ca -d 'CA certificate (PEM) of the output broker; implies --out-mqtt-tls' -r -F
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l out-mqtt-client-id -d '[default: --mqtt-client-id + "-out", else pv3-publish-<random>]' -r
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l dry-run -d 'Print each file it would write and each command it would run; change nothing (secrets shown as ***)'
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l uninstall -d 'Stop, disable and remove the service and its env file (state kept)'
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l purge -d 'With --uninstall: also delete the state directory (spool, status)'
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l user -d 'A user service (~/.config/systemd/user, systemctl --user): no root'
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l pretend-non-root -d 'Tests: behave as if not run as root'
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l mqtt-tls -d 'Connect with TLS'
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l no-api -d 'Do not send to the PV3 Monitor API (needs --publish, --ha or --metrics-listen)'
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l publish -d 'Publish each value as a plain number on PREFIX/DEVICE/METRIC (evcc, Telegraf, Node-RED)'
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l ha -d 'Home Assistant MQTT discovery (implies --publish)'
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -l out-mqtt-tls -d 'TLS to the output broker'
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -s v -l verbose -d 'More log detail (-v debug, -vv trace)'
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -s q -l quiet -d 'Less log detail (-q warnings only, -qq errors only)'
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -s h -l help -d 'Print help'
complete -c pv3 -n "__fish_pv3_using_subcommand install-service" -s V -l version -d 'Print version'
complete -c pv3 -n "__fish_pv3_using_subcommand addon" -s v -l verbose -d 'More log detail (-v debug, -vv trace)'
complete -c pv3 -n "__fish_pv3_using_subcommand addon" -s q -l quiet -d 'Less log detail (-q warnings only, -qq errors only)'
complete -c pv3 -n "__fish_pv3_using_subcommand addon" -s h -l help -d 'Print help'
complete -c pv3 -n "__fish_pv3_using_subcommand addon" -s V -l version -d 'Print version'
complete -c pv3 -n "__fish_pv3_using_subcommand completions" -s v -l verbose -d 'More log detail (-v debug, -vv trace)'
complete -c pv3 -n "__fish_pv3_using_subcommand completions" -s q -l quiet -d 'Less log detail (-q warnings only, -qq errors only)'
complete -c pv3 -n "__fish_pv3_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pv3 -n "__fish_pv3_using_subcommand completions" -s V -l version -d 'Print version'
complete -c pv3 -n "__fish_pv3_using_subcommand help; and not __fish_seen_subcommand_from devices collect sniff replay watch check-api install-service addon completions help" -f -a "devices" -d 'List the P3s publishing on a broker: find your device id'
complete -c pv3 -n "__fish_pv3_using_subcommand help; and not __fish_seen_subcommand_from devices collect sniff replay watch check-api install-service addon completions help" -f -a "collect" -d 'Forward live P3 data from MQTT to the PV3 Monitor API'
complete -c pv3 -n "__fish_pv3_using_subcommand help; and not __fish_seen_subcommand_from devices collect sniff replay watch check-api install-service addon completions help" -f -a "sniff" -d 'Capture raw MQTT traffic as JSON Lines (stdout or -o FILE)'
complete -c pv3 -n "__fish_pv3_using_subcommand help; and not __fish_seen_subcommand_from devices collect sniff replay watch check-api install-service addon completions help" -f -a "replay" -d 'Decode a capture and send it to the API (or print it with --dry-run)'
complete -c pv3 -n "__fish_pv3_using_subcommand help; and not __fish_seen_subcommand_from devices collect sniff replay watch check-api install-service addon completions help" -f -a "watch" -d 'The battery live in the terminal: power flow, charge, alarms, history'
complete -c pv3 -n "__fish_pv3_using_subcommand help; and not __fish_seen_subcommand_from devices collect sniff replay watch check-api install-service addon completions help" -f -a "check-api" -d 'Check the API end to end, and the local collector\'s status'
complete -c pv3 -n "__fish_pv3_using_subcommand help; and not __fish_seen_subcommand_from devices collect sniff replay watch check-api install-service addon completions help" -f -a "install-service" -d 'Install `pv3 collect` as a hardened systemd service'
complete -c pv3 -n "__fish_pv3_using_subcommand help; and not __fish_seen_subcommand_from devices collect sniff replay watch check-api install-service addon completions help" -f -a "addon" -d 'The Home Assistant add-on\'s start: collect, set up from /data/options.json and the Supervisor (docs/addon.md)'
complete -c pv3 -n "__fish_pv3_using_subcommand help; and not __fish_seen_subcommand_from devices collect sniff replay watch check-api install-service addon completions help" -f -a "completions" -d 'Print a shell completion script'
complete -c pv3 -n "__fish_pv3_using_subcommand help; and not __fish_seen_subcommand_from devices collect sniff replay watch check-api install-service addon completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
