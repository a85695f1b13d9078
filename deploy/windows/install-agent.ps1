<#
.SYNOPSIS
    Installs the Wasmos agent as a Windows service and starts it.

.DESCRIPTION
    Copies wasmos.exe to Program Files and the cluster CA and this agent's certificate and key
    (from deploy/issue-certs.sh) into ProgramData\Wasmos, a directory owned by Administrators
    that only Administrators, SYSTEM and the service's own virtual account (NT SERVICE\NAME)
    can open, narrowed before any key is copied in. Registers the service with
    `wasmos agent service install` and starts it. Run it in an elevated PowerShell; run it
    again to update (the old service is removed first).

.EXAMPLE
    .\install-agent.ps1 -Masters 10.0.0.1:7433,10.0.0.2:7433,10.0.0.3:7433 `
        -Pki C:\Users\me\pki -AgentName agent-3 -Exe .\wasmos.exe

.NOTES
    Uninstall: & "$env:ProgramFiles\Wasmos\wasmos.exe" agent service uninstall
#>
param(
    [Parameter(Mandatory = $true)] [string[]] $Masters,
    [Parameter(Mandatory = $true)] [string] $Pki,
    [Parameter(Mandatory = $true)] [string] $AgentName,
    [string] $Exe = ".\wasmos.exe",
    [string] $ServiceName = "wasmos-agent",
    [string[]] $ExtraArgs = @()
)
$ErrorActionPreference = "Stop"

$bin = Join-Path $env:ProgramFiles "Wasmos"
$data = Join-Path $env:ProgramData "Wasmos"
$work = Join-Path $data "agent"
$account = "NT SERVICE\$ServiceName"
New-Item -ItemType Directory -Force -Path $bin, $data | Out-Null

# Owned by Administrators and closed to everyone else before a key goes in: a directory
# someone created in advance is taken over, not trusted.
icacls $data /setowner "Administrators" /T | Out-Null
icacls $data /inheritance:r /grant:r "Administrators:(OI)(CI)F" "SYSTEM:(OI)(CI)F" | Out-Null
if ($LASTEXITCODE -ne 0) { throw "icacls failed on $data" }
New-Item -ItemType Directory -Force -Path $work | Out-Null

$wasmos = Join-Path $bin "wasmos.exe"
if (Get-Service -Name $ServiceName -ErrorAction SilentlyContinue) {
    & $wasmos agent service uninstall --name $ServiceName
    if ($LASTEXITCODE -ne 0) { throw "could not remove the old service $ServiceName" }
}
Copy-Item -Force $Exe $wasmos
Copy-Item -Force (Join-Path $Pki "ca.pem") (Join-Path $data "ca.pem")
Copy-Item -Force (Join-Path $Pki "$AgentName.pem") (Join-Path $data "agent.pem")
Copy-Item -Force (Join-Path $Pki "$AgentName.key") (Join-Path $data "agent.key")

$agentArgs = @(
    "--master", ($Masters -join ","),
    "--ca", (Join-Path $data "ca.pem"),
    "--cert", (Join-Path $data "agent.pem"),
    "--key", (Join-Path $data "agent.key"),
    "--work-dir", $work,
    "--log-file", (Join-Path $data "agent.log")
) + $ExtraArgs
& $wasmos agent service install --name $ServiceName -- @agentArgs
if ($LASTEXITCODE -ne 0) { throw "wasmos agent service install failed" }

# The service's own account (it exists once the service does) reads its files and writes
# its work directory and log; no other service shares it.
icacls $data /grant "${account}:(OI)(CI)RX" | Out-Null
icacls $work /grant "${account}:(OI)(CI)M" | Out-Null
# And the service's own: at every start the agent sets the protected DACL it gives private
# directories (the service account, SYSTEM, Administrators), which needs an owner's rights.
icacls $work /setowner $account /T | Out-Null
New-Item -ItemType File -Force -Path (Join-Path $data "agent.log") | Out-Null
icacls (Join-Path $data "agent.log") /grant "${account}:M" | Out-Null
if ($LASTEXITCODE -ne 0) { throw "icacls failed granting $account" }

& $wasmos agent service start --name $ServiceName
if ($LASTEXITCODE -ne 0) { throw "the service did not start; see $(Join-Path $data 'agent.log')" }

# Agents reach masters and each other over QUIC (UDP).
New-NetFirewallRule -DisplayName "Wasmos agent" -Direction Inbound -Program $wasmos `
    -Protocol UDP -Action Allow -ErrorAction SilentlyContinue | Out-Null
Write-Host "Wasmos agent $AgentName runs as service $ServiceName; log: $(Join-Path $data 'agent.log')"
